"""LiteLLM's custom-auth hook: the keys in env_file, each scoped to the served names the spec gives it.

Loaded by LiteLLM from its config (`general_settings.custom_auth: scoped_keys.user_api_key_auth`). The
router file (deploy/router.py) holds the served names, and the keys' variable names and scopes only; the values come from the environment (env_file), checked by
start.py before LiteLLM starts. A wrong or missing key gets 401, a model no server serves 404 (as from vLLM
and OpenAI; LiteLLM itself says 400), a model outside the key's scope 403; the key's name (never the key) is
what LiteLLM's logs and metrics see.
"""

from __future__ import annotations

import hmac
import json
import os

from fastapi import Request
from litellm.proxy._types import ProxyException, UserAPIKeyAuth
from litellm.proxy.common_utils.http_parsing_utils import read_request_body

with open(os.environ["ROUTER_FILE"], encoding="utf-8") as f:
    _config = json.load(f)
MODELS: list[str] = _config["models"]
SCOPES: dict[str, str | list[str]] = _config["keys"]
KEYS = [(os.environ[name].encode(), name) for name in SCOPES]


def _name_of(key: str) -> str | None:
    given = key.encode()
    found = None
    for value, name in KEYS:  # every key compared in constant time: no early exit that a timing could reveal
        if hmac.compare_digest(given, value):
            found = name
    return found


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    name = _name_of(api_key.removeprefix("Bearer ").strip()) if api_key else None
    if name is None:
        raise ProxyException(message="invalid or missing API key (send it as Authorization: Bearer KEY)",
                             type="auth_error", param="Authorization", code=401)
    scope = SCOPES[name]
    body = await read_request_body(request) if request.method == "POST" else {}  # parsed once, cached by LiteLLM
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str):
        if model not in MODELS:
            raise ProxyException(message=f"the model {model[:100]!r} does not exist; this endpoint serves: "
                                 f"{', '.join(MODELS if scope == '*' else scope)}", type="invalid_request_error",
                                 param="model", code=404, openai_code="model_not_found")
        if scope != "*" and model not in scope:
            raise ProxyException(message=f"key {name} may not use model {model!r}; it may use: "
                                 f"{', '.join(scope)}", type="permission_error", param="model", code=403)
    # models: what /v1/models lists for this key (empty: all).
    return UserAPIKeyAuth(api_key=name, key_alias=name, models=[] if scope == "*" else list(scope))
