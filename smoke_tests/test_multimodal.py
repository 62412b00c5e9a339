"""Image and video checks, for deployments that claim multimodal limits (--limit-mm-per-prompt or --spec).

Media are made on the fly (PIL images, an OpenCV MP4) and sent as data URLs; local-file
checks need the server's allowed media folder on this machine (--media-path). These test
the plumbing — limits, URL kinds, media paths — not what the model sees.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import uuid

import openai
import pytest


def png(color=(200, 30, 30), size=(56, 56)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def mp4(frames=8, size=(56, 56)) -> bytes:
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless makes the test video")
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 2, size)
        for i in range(frames):
            w.write(np.full((size[1], size[0], 3), 30 * i % 255, np.uint8))
        w.release()
        return open(path, "rb").read()


def ask(server, parts, max_tokens=4):
    content = [*parts, {"type": "text", "text": "Describe this."}]
    return server.client().chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0)


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def limit(server, kind):
    n = server.mm_limits.get(kind)
    if not n:
        pytest.skip(f"the deployment claims no {kind} input (limit_mm_per_prompt)")
    return n if isinstance(n, int) else n.get("count", 1)


def test_single_image(server):
    limit(server, "image")
    r = ask(server, [image_part(data_url(png(), "image/png"))])
    assert r.usage.prompt_tokens > 10 and r.choices[0].finish_reason in ("length", "stop")


def test_several_images_count_in_the_prompt(server):
    if limit(server, "image") < 3:
        pytest.skip("limit below 3 images")
    one = ask(server, [image_part(data_url(png(), "image/png"))]).usage.prompt_tokens
    three = ask(server, [image_part(data_url(png((0, i * 80, 0)), "image/png")) for i in range(3)]).usage.prompt_tokens
    assert three > one, f"3 images took {three} prompt tokens, 1 image {one}: images are not reaching the model"


def test_images_over_the_limit_are_refused(server):
    n = limit(server, "image")
    with pytest.raises(openai.BadRequestError, match="(?i)at most|limit|exceed"):
        ask(server, [image_part(data_url(png(), "image/png"))] * (n + 1))


def test_video(server):
    limit(server, "video")
    r = ask(server, [{"type": "video_url", "video_url": {"url": data_url(mp4(), "video/mp4")}}])
    assert r.usage.prompt_tokens > 10


def test_video_over_the_limit_is_refused(server):
    n = limit(server, "video")
    part = {"type": "video_url", "video_url": {"url": data_url(mp4(), "video/mp4")}}
    with pytest.raises(openai.BadRequestError):
        ask(server, [part] * (n + 1))


def test_local_media_inside_the_allowed_folder(server):
    limit(server, "image")
    if not server.media_path or not os.path.isdir(server.media_path):
        pytest.skip("the server's allowed media folder is not on this machine (pass --media-path)")
    name = f"smoke-{uuid.uuid4().hex[:8]}.png"
    path = os.path.join(server.media_path, name)
    with open(path, "wb") as f:
        f.write(png())
    try:
        r = ask(server, [image_part(f"file://{path}")])
        assert r.usage.prompt_tokens > 10
    finally:
        os.unlink(path)


def test_local_media_outside_the_allowed_folder_is_refused(server):
    """A file that exists in every container (/etc/hostname), outside the allowed folder: the refusal must
    be the path rule's. A server allowing `/` reads the file and fails only on decoding it, which this catches."""
    limit(server, "image")
    if server.media_path and server.media_path.rstrip("/") in ("", "/etc"):
        pytest.fail(f"--allowed-local-media-path {server.media_path} lets clients read files outside a media folder")
    with pytest.raises(openai.BadRequestError) as e:
        ask(server, [image_part("file:///etc/hostname")])
    message = str(e.value).lower()
    assert "allowed-local-media-path" in message or "allowed_local_media_path" in message, (
        f"refused for another reason than the path rule (is --allowed-local-media-path too wide?): {e.value}")
