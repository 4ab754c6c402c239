"""Request model of `POST /v1/videos` (pydantic: OpenAPI schema, 422 naming the field) and the server's limits."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 1000
MAX_BODY_BYTES = 16 * 1024
SIZE_FORM = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


class VideoCreate(BaseModel):
    """One video job: the arguments of `miga-fast render` (guidance = classifier-free guidance scale)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS,
                               examples=["a red circle moving left on a striped blue background"])
    prompt_schedule: str | None = Field(None, min_length=1, max_length=4 * MAX_PROMPT_CHARS,
                                        description="'0:prompt a;200:prompt b' (frame:prompt pairs)")
    frames: int = Field(64, ge=1, description="number of frames (at most the server's --max-frames)")
    mode: Literal["fifo", "miga", "miga-stream"] = "miga-stream"
    seed: int = Field(0, ge=0, lt=2**63)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    size: str | None = Field(None, description="frame 'HxW' in pixels (default: the model's)", examples=["32x32"])
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)

    @field_validator("size")
    @classmethod
    def _size(cls, value):
        if value is not None and not SIZE_FORM.match(value):
            raise ValueError("size must be 'HxW', two positive integers, e.g. '32x32'")
        return value

    def render_args(self) -> dict:
        """`VideoGenerator.render` keyword arguments (size as (H, W), guidance as guidance_scale)."""
        args = self.model_dump(exclude_none=True)
        if "size" in args:
            h, w = SIZE_FORM.match(args["size"]).groups()
            args["size"] = (int(h), int(w))
        if "guidance" in args:
            args["guidance_scale"] = args.pop("guidance")
        return args
