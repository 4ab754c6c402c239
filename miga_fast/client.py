"""A small client of `miga-fast serve` for scripts (standard library only).

    client = miga_fast.client.Client("http://127.0.0.1:8000", token=None)
    job = client.create(prompt="a red circle moving left on a striped blue background", frames=64)
    for index, frame in client.frames(job["id"]):      # uint8 [H, W, 3] as each frame finishes
        ...
    client.download(client.wait(job["id"])["id"], "out.mp4")
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


class ServiceError(Exception):
    """An HTTP error from the service: `status` and the server's `detail`."""

    def __init__(self, status: int, detail):
        self.status, self.detail = status, detail
        super().__init__(f"{status}: {detail}")


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0):
        self.base, self.token, self.timeout = base_url.rstrip("/"), token, timeout

    def _open(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            try:
                detail = json.loads(err.read()).get("detail")
            except ValueError:
                detail = err.reason
            raise ServiceError(err.code, detail) from None

    def _json(self, method: str, path: str, body: dict | None = None):
        with self._open(method, path, body) as response:
            return json.loads(response.read())

    def create(self, **fields) -> dict:
        """POST /v1/videos: fields as `miga-fast render`'s (prompt, frames, mode, seed, steps, guidance, ...)."""
        return self._json("POST", "/v1/videos", fields)

    def get(self, video_id: str) -> dict:
        return self._json("GET", f"/v1/videos/{video_id}")

    def list(self, limit: int = 100) -> list[dict]:
        return self._json("GET", f"/v1/videos?limit={limit}")["data"]

    def cancel(self, video_id: str) -> dict:
        return self._json("DELETE", f"/v1/videos/{video_id}")

    def wait(self, video_id: str, timeout: float = 3600.0, poll: float = 0.2) -> dict:
        """Poll until the job is completed, failed or cancelled; the job object."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(video_id)
            if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
                return job
            time.sleep(poll)

    def content(self, video_id: str, byte_range: tuple[int, int] | None = None) -> bytes:
        headers = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"}
        with self._open("GET", f"/v1/videos/{video_id}/content", headers=headers) as response:
            return response.read()

    def download(self, video_id: str, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.content(video_id))
        return path

    def frames(self, video_id: str) -> Iterator[tuple]:
        """(index, uint8 ndarray [H, W, 3]) as the frames finish (the ndjson stream)."""
        import numpy as np
        from PIL import Image

        with self._open("GET", f"/v1/videos/{video_id}/stream?format=ndjson") as response:
            for line in response:
                item = json.loads(line)
                image = Image.open(io.BytesIO(base64.b64decode(item["jpeg"])))
                yield item["index"], np.asarray(image.convert("RGB"))
