"""What the APIs themselves are like: one module per provider, and what all of them share.

- `openai`, `azure`, `anthropic`: each provider's URLs, key variable and auth headers, rate-limit headers (one
  parser each), error words, limits and token accounting, as a `Provider` (`provider`);
- `registry`: the provider for a URL (`provider_for`), or for an answer's headers (`parse_rate_limit_headers`),
  and every provider's error words at once (`ERRORS`). The rest of the package asks here, and names none;
- `endpoints`: which endpoint a URL names, what its body must carry; `rate_limits`: the report every header
  parser makes; `token_estimation` and `prompt_pieces`: a request's tokens, known before it is sent.

Below `core` (which asks the providers) and above `base`: nothing here imports the layers above.
"""
