"""In-memory stand-ins for the PyTorch-side packages openpi and pistar import but their JAX paths never use.

The fixture generators (`make_*_fixture.py`) run upstream code in a venv with upstream's pins and no PyTorch:
openpi's modules import torch, safetensors and transformers at module level only for type annotations and
PyTorch loaders. `install()` puts empty modules with those names in `sys.modules` (only for packages that
are not installed), so the imports succeed and anything actually called fails loudly.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _module(name: str, **attrs: object) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


class _Placeholder:
    """A torch dtype, device or class named at import time."""

    def __init__(self, name: str = "placeholder", *args: object, **kwargs: object):
        self.name = name

    def __repr__(self) -> str:
        return f"stand-in {self.name}"


def _names(make):  # module __getattr__ (PEP 562): any other attribute is a placeholder
    def getattr_(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return make(name)

    return getattr_


def _torch() -> None:
    module_cls = type("Module", (), {})
    functional = _module("torch.nn.functional")
    nn = _module("torch.nn", Module=module_cls, functional=functional,
                 __getattr__=_names(lambda n: type(n, (module_cls,), {})))  # fmt: skip
    decorators = {n: (lambda *a, **k: (lambda f: f)) for n in ("no_grad", "compile", "inference_mode")}
    classes = {n: type(n, (), {}) for n in ("Tensor", "LongTensor", "FloatTensor", "BoolTensor", "dtype", "device")}
    _module("torch", nn=nn, **classes, **decorators, __getattr__=_names(_Placeholder))


def _transformers() -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("transformers stand-in: PyTorch code is not available here")

    models = _module("transformers.models")
    models.auto = _module("transformers.models.auto", CONFIG_MAPPING={})
    models.gemma = _module("transformers.models.gemma")
    models.gemma.modeling_gemma = _module("transformers.models.gemma.modeling_gemma", __getattr__=_names(_Placeholder))
    processor = type("AutoProcessor", (), {"from_pretrained": staticmethod(refuse)})
    _module("transformers", models=models, AutoProcessor=processor, __getattr__=_names(lambda n: type(n, (), {})))


def _safetensors() -> None:
    _module("safetensors", torch=_module("safetensors.torch", __getattr__=_names(_Placeholder)))


def install() -> None:
    """Stand-ins for torch, transformers and safetensors, each only when not installed."""
    for package, make in (("torch", _torch), ("transformers", _transformers), ("safetensors", _safetensors)):
        if package not in sys.modules and importlib.util.find_spec(package) is None:
            make()
