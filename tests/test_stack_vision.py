"""GLM-4.1V's path (images, video, the media folder) through real vLLM 0.32 on CPU, from the preset users start.

GLM-4.1V-9B-Thinking cannot run here (no GPU; the hubs are unreachable), so a tiny random-weight checkpoint of
its own architecture (Glm4vForConditionalGeneration with GLM-4.1V's image and video processors, made by
tests/fixtures/make_tiny_glm.py) stands in. It is served through compose from tests/stacks/vision-cpu.yaml —
the `glm-4.1v-9b-thinking` preset with only the model and the device swapped: its limits (32 images, 1 video),
its media folder (./media read-only at /media), its reasoning parser and sampling. The smoke suite's
multimodal checks must pass against it, and so must the GLM-4.1V tutorial's client requests. These prove the
plumbing (vLLM's image and video processors, the vision tower, limits, URL kinds, paths), not what a model sees.
"""

from __future__ import annotations

import os

import pytest
from openai import OpenAI

from support import ROOT, api_key, junit_outcomes, rendered_stack, run_smoke, with_ports

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SPEC = ROOT / "tests/stacks/vision-cpu.yaml"
SERVED = "glm-4.1v-9b-thinking"
MULTIMODAL_CHECKS = {
    "test_single_image", "test_several_images_count_in_the_prompt", "test_images_up_to_the_limit_are_accepted",
    "test_images_over_the_limit_are_refused", "test_video", "test_video_over_the_limit_is_refused",
    "test_local_media_inside_the_allowed_folder", "test_local_media_outside_the_allowed_folder_is_refused"}


@pytest.fixture(scope="module")
def vision(tiny_vision_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("vision")
    spec, ports = with_ports(SPEC, work / "vision-cpu.yaml")
    with rendered_stack(spec, work, ["glm-4.1v"], links={"models": tiny_vision_model}):
        yield work, ports["glm-4.1v"], api_key(work)


def test_the_multimodal_smoke_checks_pass(vision, tmp_path):
    """One image, several, 32 accepted and 33 refused, a video (and two refused), data: and file:// URLs, a file
    in the media folder read and one outside it refused with vLLM's path message — claims read from the spec."""
    work, port, _ = vision
    junit = tmp_path / "smoke.xml"
    r, counts = run_smoke(port, SERVED, work, junit, f"--spec={work / 'vision-cpu.yaml'}", "--service=glm-4.1v",
                          f"--media-dir={work / 'media'}", "-k", "test_multimodal")
    outcomes = junit_outcomes(junit)
    assert r.returncode == 0 and counts["failures"] == counts["errors"] == 0, r.stdout[-4000:]
    assert {name for name, outcome in outcomes.items() if outcome == "passed"} >= MULTIMODAL_CHECKS, outcomes


def _tutorial_content_item(media_path: str) -> dict:
    """The GLM-4.1V tutorial's `create_content_item` with its `get_media_type`, restated: a local path becomes a
    file:// URL, typed video_url or image_url by extension."""
    url = media_path if media_path.startswith(("http://", "https://")) else "file://" + media_path
    kind = "video_url" if os.path.splitext(media_path.lower())[1] in (".mp4", ".avi", ".mov") else "image_url"
    return {"type": kind, kind: {"url": url}}


def test_the_glm41v_tutorial_client_requests(vision):
    """The requests of the GLM-4.1V vLLM tutorial's client (datawhalechina/self-llm, models/GLM-4.1V-Thinking/
    "01-GLM-4 1V-Thinking vLLM部署调用.md", its `vllm_openai_completions.py`): one image, then two, from local files
    by `file://` path, `temperature=1.0, top_p=None`, `extra_body={"skip_special_tokens": False,
    "repetition_penalty": 1.0}`, no max_tokens, the answer read as `message.content.strip()`. Only the base URL,
    the key and the media paths differ: files put in ./media are /media/NAME in the server.

    The tiny model ends its answers after a few tokens (make_tiny_glm.ends_soon), so the request without
    max_tokens finishes instead of running to the 25000-token context."""
    from PIL import Image

    work, port, key = vision
    media = work / "media"
    for name, color in (("demo1.png", (200, 30, 30)), ("demo2-1.png", (30, 200, 30)), ("demo2-2.png", (30, 30, 200))):
        Image.new("RGB", (448, 336), color).save(media / name)
        os.chmod(media / name, 0o644)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=300)

    def ask(*paths: str, question: str):
        messages = [{"role": "user", "content": [*map(_tutorial_content_item, paths), {"type": "text", "text": question}]}]
        r = client.chat.completions.create(model=SERVED, messages=messages, temperature=1.0, top_p=None,
                                           extra_body={"skip_special_tokens": False, "repetition_penalty": 1.0})
        assert isinstance(r.choices[0].message.content, str), r.choices[0].message  # the tutorial calls .strip()
        print(f"{len(paths)} image(s): {r.usage.prompt_tokens} prompt tokens, answer {r.choices[0].message.content.strip()!r}")
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        return r.usage.prompt_tokens

    one = ask("/media/demo1.png", question="这张图是什么")
    two = ask("/media/demo2-1.png", "/media/demo2-2.png", question="这两张图像之间可能有哪些关联？")
    # 448×336 px is 32×24 patches of 14 px, merged 2×2: 192 image tokens (a second image, and a longer question).
    assert two - one >= 150, f"two images took {two} prompt tokens, one {one}: the second image did not reach the model"
