"""What the APIs themselves are like: one module per provider, and what all of them share.

- `openai`, `azure`, `anthropic`, `gemini`: each provider's URLs, key variable and auth headers, rate-limit headers (one
  parser each), error words, limits and token accounting, as a `Provider` (`provider`);
- `registry`: the provider for a URL (`provider_for`), or for an answer's headers (`parse_rate_limit_headers`),
  and every provider's error words at once (`ERRORS`). The rest of the package asks here, and names none;
- `endpoints`: which endpoint a URL names, what its body must carry; `rate_limits`: the report every header
  parser makes; `token_estimation` and `prompt_pieces`: a request's tokens, known before it is sent.

Adding a provider, step by step:

1. a module here (`gemini.py` is the latest, and a short one to copy the shape of) that makes a `Provider`: its
   `serves(url)`, key variables and `auth_headers`, own hosts (a run without a key is refused there), its
   rate-limit header parser (or one that reads nothing: the run then learns the rate from its 429s), its
   `ErrorDialect` (which codes stop the run, which words name the token limit or a wait);
2. only where its API differs from OpenAI's, the optional hooks: `wait_in_body` (a wait said in the error body),
   `usage_in_answer` (token counts not in `usage`), `quota_exhausted_for_the_day` (a daily quota that ends the
   run), `model_in_url` (a model named by the URL, for prices), `limits_output_tokens`; for `--mode batch`,
   `batch_api_refusal` (none), `message_batches` (requests in the create call, results by URL, as Anthropic's)
   or `batch_place` (OpenAI's Files and Batches API elsewhere, as Azure's);
3. its line in `registry.PROVIDERS`, before the OpenAI-compatible default that serves any URL;
4. an API with its own body shape adds an `endpoints.Endpoint`, its required field, its prompt pieces
   (`prompt_pieces`) and its answer's field (`core.classification`);
5. a strict double of its API in `mock_server/` (as `mock_server/gemini.py`), built from its documentation and
   saying nothing the real API does not, and tests that run the command against it (as `tests/test_gemini.py`);
6. its row in the README's provider table.

Below `core` (which asks the providers) and above `base`: nothing here imports the layers above.
"""
