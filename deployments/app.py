"""The application builder named by serve_config.yaml: typed args in, the bound deployment graph out.

No `from __future__ import annotations` here: Serve reads build_app's annotation to validate the YAML args.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.auth import AuthOptions
from deployments.generator import AvatarGenerator
from deployments.ingress import AvatarIngress
from deployments.options import StreamOptions
from deployments.streams import StreamStore
from model.config import PROJECT_ROOT, ModelConfig, load_model_config
from model.media import EncodingOptions
from model.request import RequestLimits

MODEL_DIR_ENV = "OMNIAVATAR_MODEL_DIR"


class AppArgs(BaseModel):
    """The `args` of the application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("preview", description="The backend to serve: preview or omniavatar")
    config: str | None = Field(None, description="Model config YAML; default configs/<backend>.yaml")
    options: dict[str, Any] = Field(default_factory=dict, description="Merged into the model config's `options`")
    model_dir: str | None = Field(
        None, description=f"Folder of the model files, for configs with `options.model_dir`; default ${MODEL_DIR_ENV}"
    )
    limits: RequestLimits = RequestLimits()
    encoding: EncodingOptions = EncodingOptions()
    stream: StreamOptions = StreamOptions()
    auth: AuthOptions = AuthOptions()
    load_timeout_s: float = Field(3600.0, description="A replica whose backend is still loading after this long is replaced")
    generator: dict[str, Any] = Field(default_factory=dict, description="Serve options for AvatarGenerator")
    ingress: dict[str, Any] = Field(default_factory=dict, description="Serve options for AvatarIngress")

    @classmethod
    def from_serve_config(cls, path: str | Path = PROJECT_ROOT / "serve_config.yaml", **overrides: Any) -> "AppArgs":
        """The args of a serve config's first application, its `deployments` section as deployment options,
        then `overrides`: the same service as `serve run` starts, for in-process use (tests, benchmarks)."""
        application = yaml.safe_load(Path(path).read_text())["applications"][0]
        options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in application.get("deployments", [])}
        fields = {**application.get("args", {}), "generator": options.get("AvatarGenerator", {}), "ingress": options.get("AvatarIngress", {})}
        return cls(**{**fields, **overrides})


def build_app(args: AppArgs) -> Application:
    config = load_model_config(args.config or f"configs/{args.backend}.yaml", {"options": args.options})
    model_dir = args.model_dir or os.environ.get(MODEL_DIR_ENV)
    if model_dir and "model_dir" in config.options:  # only backends with weights name a model_dir
        config = dataclasses.replace(config, options={**config.options, "model_dir": model_dir})
    if config.backend != args.backend:
        raise ValueError(f"args.backend is {args.backend!r} but {config.source} configures backend {config.backend!r}")
    generator = AvatarGenerator.options(**args.generator).bind(
        config, args.encoding, load_timeout_s=args.load_timeout_s, options=args.stream
    )
    return bind_ingress(generator, config, args.limits, args.stream, args.auth, args.ingress)


def bind_ingress(
    generator: Application, config: ModelConfig, limits: RequestLimits, stream: StreamOptions, auth: AuthOptions | None = None, ingress: dict[str, Any] | None = None
) -> Application:
    """The ingress over a bound generator, with the StreamStore that runs and logs the requests between them."""
    store = StreamStore.bind(generator, stream)
    return AvatarIngress.options(**(ingress or {})).bind(generator, store, config, limits, stream, auth)
