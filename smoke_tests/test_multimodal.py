"""Image and video checks, for deployments that claim multimodal limits (--limit-mm-per-prompt or --spec).

Media are made on the fly (PIL images, an OpenCV MP4) and sent as data URLs; local-file
checks need the server's allowed media folder on this machine (--media-path, and --media-dir where
this machine sees it elsewhere, as for a container's mount). These test the plumbing — limits, URL
kinds, media paths — not what the model sees. A deployment whose spec claims no images must refuse them.
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


def test_images_up_to_the_limit_are_accepted(server):
    n = limit(server, "image")
    r = ask(server, [image_part(data_url(png((i * 7 % 256, 0, 0)), "image/png")) for i in range(n)])
    assert r.usage.prompt_tokens > n, f"{n} images took {r.usage.prompt_tokens} prompt tokens"


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
    if not server.media_path:
        pytest.skip("the server allows no local media (no --allowed-local-media-path)")
    if not server.media_dir or not os.path.isdir(server.media_dir):
        pytest.skip(f"the server's media folder {server.media_path} is not on this machine "
                    "(pass --media-dir: where it is here, e.g. the media_dir beside compose.yaml)")
    name = f"smoke-{uuid.uuid4().hex[:8]}.png"
    path = os.path.join(server.media_dir, name)
    with open(path, "wb") as f:
        f.write(png())
    os.chmod(path, 0o644)  # the server runs as another user
    try:
        r = ask(server, [image_part(f"file://{server.media_path.rstrip('/')}/{name}")])
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


def test_an_image_to_a_text_only_deployment_is_refused(server):
    """A deployment that claims no image input (its spec, or --limit-mm-per-prompt '{}') must refuse one."""
    if not server.mm_known:
        pytest.skip("the deployment's multimodal limits are unknown (pass --spec or --limit-mm-per-prompt)")
    if server.mm_limits.get("image"):
        pytest.skip("the deployment claims image input")
    with pytest.raises(openai.BadRequestError) as e:
        ask(server, [image_part(data_url(png(), "image/png"))])
    assert "image" in str(e.value).lower() or "multimodal" in str(e.value).lower(), str(e.value)
