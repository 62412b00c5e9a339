"""LiteLLM callback: answers through the router carry vLLM's own reasoning field, as straight from vLLM.

LiteLLM rewrites a message's thinking into `reasoning_content` (and tucks the original under
provider_specific_fields). vLLM 0.16 and later call it `reasoning`, and clients written against them read
that; so the field the pinned vLLM uses (router.json's `reasoning_field`, from deploy/versions.py) is set
again beside LiteLLM's, in whole answers and in every streamed delta. Both names at once is what vLLM
0.12-0.15 sent.
"""

from __future__ import annotations

import json
import os

from litellm.integrations.custom_logger import CustomLogger

with open(os.environ["ROUTER_FILE"], encoding="utf-8") as f:
    FIELD: str | None = json.load(f)["reasoning_field"]


def _mirror(part) -> None:
    thinking = getattr(part, "reasoning_content", None)
    if thinking is not None and FIELD and FIELD != "reasoning_content":
        setattr(part, FIELD, thinking)


class VllmFields(CustomLogger):
    async def async_post_call_success_hook(self, data, user_api_key_dict, response):
        for choice in getattr(response, "choices", None) or []:
            _mirror(getattr(choice, "message", None))
        return response

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response, request_data):
        async for chunk in response:
            for choice in getattr(chunk, "choices", None) or []:
                _mirror(getattr(choice, "delta", None))
            yield chunk


proxy_handler_instance = VllmFields()
