"""The application builder named by serve_config.yaml: typed args in, the bound deployment graph out.

No `from __future__ import annotations` here: Serve reads build_app's annotation to validate the YAML args.
"""

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from ray.serve import Application

from deployments.auth import AuthOptions
from deployments.generator import AvatarGenerator
from deployments.ingress import AvatarIngress
from deployments.options import StreamOptions
from deployments.profiles import PROFILE_NAME_PATTERN, ServedProfile, generator_name
from deployments.streams import StreamStore
from deployments.text_encoder import TextEncoder
from model.config import PROJECT_ROOT, ModelConfig, load_model_config
from model.media import EncodingOptions
from model.request import DEFAULT_PROFILE, RequestLimits

MODEL_DIR_ENV = "OMNIAVATAR_MODEL_DIR"
ProfileName = Annotated[str, StringConstraints(pattern=PROFILE_NAME_PATTERN)]


class ProfileArgs(BaseModel):
    """One more profile (`args.profiles.<name>`), served by its own deployment AvatarGenerator-<name>."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="Model config YAML of this profile")
    options: dict[str, Any] = Field(default_factory=dict, description="Merged into the model config's `options`")
    model_dir: str | None = Field(None, description="Folder of the model files; default the application's model_dir")
    generator: dict[str, Any] = Field(
        default_factory=dict, description="Serve options for AvatarGenerator-<name> (a serve config sets them in `deployments`)"
    )


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
    default_profile: ProfileName = Field(
        DEFAULT_PROFILE, description="The name requests give (in `profile`) to the model that config, options and AvatarGenerator serve"
    )
    profiles: dict[ProfileName, ProfileArgs] = Field(default_factory=dict, description="More profiles, each with its own model and generators")
    text_encoder: dict[str, Any] = Field(
        default_factory=dict, description="Serve options for TextEncoder (models with options.shared_text_encoder)"
    )

    @model_validator(mode="after")
    def _distinct_profiles(self) -> "AppArgs":
        if self.default_profile in self.profiles:
            raise ValueError(f"profiles.{self.default_profile} is the default profile (top-level config); give it another name")
        return self

    @classmethod
    def from_serve_config(cls, path: str | Path = PROJECT_ROOT / "serve_config.yaml", **overrides: Any) -> "AppArgs":
        """The args of a serve config's first application, its `deployments` section as deployment options,
        then `overrides`: the same service as `serve run` starts, for in-process use (tests, benchmarks)."""
        application = yaml.safe_load(Path(path).read_text())["applications"][0]
        options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in application.get("deployments", [])}
        args = application.get("args", {})
        profiles = {name: {**profile, "generator": options.get(generator_name(name), {})} for name, profile in args.get("profiles", {}).items()}
        fields = {**args, "generator": options.get(generator_name(None), {}), "ingress": options.get("AvatarIngress", {}), "profiles": profiles,
                  "text_encoder": options.get("TextEncoder", {})}  # fmt: skip
        return cls(**{**fields, **overrides})


def _model_config(path: str, options: dict[str, Any], model_dir: str | None) -> ModelConfig:
    config = load_model_config(path, {"options": options})
    model_dir = model_dir or os.environ.get(MODEL_DIR_ENV)
    if model_dir and "model_dir" in config.options:  # only backends with weights name a model_dir
        config = dataclasses.replace(config, options={**config.options, "model_dir": model_dir})
    return config


def _generator(args: AppArgs, config: ModelConfig, profile: str | None, serve_options: dict[str, Any]) -> Application:
    """The generator deployment of `profile` (None: the default profile), with its own TextEncoder deployment
    when its model shares one text encoder between replicas."""
    text_encoder = None
    if config.options.get("shared_text_encoder"):
        name = "TextEncoder" if profile is None else f"TextEncoder-{profile}"
        text_encoder = TextEncoder.options(**{"name": name, **args.text_encoder}).bind(config)
    return AvatarGenerator.options(**{"name": generator_name(profile), **serve_options}).bind(
        config, args.encoding, load_timeout_s=args.load_timeout_s, options=args.stream, text_encoder=text_encoder
    )


def build_app(args: AppArgs) -> Application:
    config = _model_config(args.config or f"configs/{args.backend}.yaml", args.options, args.model_dir)
    if config.backend != args.backend:
        raise ValueError(f"args.backend is {args.backend!r} but {config.source} configures backend {config.backend!r}")
    others = []
    for name, profile in args.profiles.items():
        profile_config = _model_config(profile.config, profile.options, profile.model_dir or args.model_dir)
        others.append(ServedProfile(name, _generator(args, profile_config, name, profile.generator), profile_config))
    generator = _generator(args, config, None, args.generator)
    return bind_ingress(generator, config, args.limits, args.stream, args.auth, args.ingress, args.default_profile, tuple(others))


def bind_ingress(
    generator: Application,
    config: ModelConfig,
    limits: RequestLimits,
    stream: StreamOptions,
    auth: AuthOptions | None = None,
    ingress: dict[str, Any] | None = None,
    default_profile: str = DEFAULT_PROFILE,
    other_profiles: tuple[ServedProfile, ...] = (),
) -> Application:
    """The ingress over bound generators (`generator` and `config`: the default profile's, named `default_profile`
    in requests), with the StreamStore that runs and logs the requests between them."""
    profiles = (ServedProfile(default_profile, generator, config), *other_profiles)
    store = StreamStore.bind({profile.name: profile.generator for profile in profiles}, stream)
    return AvatarIngress.options(**(ingress or {})).bind(store, profiles, limits, stream, auth)
