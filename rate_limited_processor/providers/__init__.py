"""What the APIs themselves are like: one module per provider, and what all of them share.

- `openai`, `azure`, `anthropic`, `gemini`: each provider's URLs, key variable and auth headers, rate-limit headers (one
  parser each), error words, limits and token accounting, as a `Provider` (`provider`);
- `registry`: the provider for a URL (`provider_for`), or for an answer's headers (`parse_rate_limit_headers`),
  and every provider's error words at once (`ERRORS`). The rest of the package asks here, and names none;
- `endpoints`: which endpoint a URL names, what its body must carry; `rate_limits`: the report every header
  parser makes; `token_estimation` and `prompt_pieces`: a request's tokens, known before it is sent.

Adding a provider: a module here that makes a `Provider` (its URLs, key variables, auth headers, rate-limit
header parser or none, error words, and where its answers say a wait or their usage, if not as OpenAI's do),
and its line in `registry.PROVIDERS`; an API with its own body shape adds an `endpoints.Endpoint`, its
required field, its prompt pieces (`prompt_pieces`) and its answer's field (`core.classification`). `gemini`
is the latest example; its strict double lives in `mock_server/gemini.py`.

Below `core` (which asks the providers) and above `base`: nothing here imports the layers above.
"""
