"""Array libraries as the suite sees them: NumPy arrays in, native arrays on a device, NumPy out.

Each framework is imported only when a case needs it (``jax`` and ``torch`` never together unless
both are asked for). The device names are the suite's: "cpu", "cuda", "tpu", "mps". Keras 3 code runs
on the arrays of Keras's backend (torch, jax or numpy: ``KERAS_BACKEND``); what sets it apart is its
mixed precision, a global dtype policy (``keras_framework``, ``uses_keras``).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

DEVICES = ("cpu", "cuda", "tpu", "mps")


class Framework:
    """How to move arrays to and from one array library, and what it offers."""

    name = ""
    devices: tuple[str, ...] = ("cpu",)  # the devices this library can run on at all
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
    has_autodiff = False
    mutable = True

    def present(self, device: str) -> bool:
        return device == "cpu"

    def label(self) -> str:
        """The name a report shows."""
        return self.name

    def unsupported(self, dtype: str, device: str) -> str | None:
        """Why ``dtype`` cannot exist on ``device`` in this library (None: it can)."""
        return None if dtype in self.dtypes else f"{self.name} has no {dtype}"

    def device_description(self, device: str) -> str:
        return device

    def to_native(self, array: np.ndarray, device: str) -> Any:
        raise NotImplementedError

    def to_numpy(self, array: Any) -> np.ndarray:
        raise NotImplementedError

    def is_native(self, value: object) -> bool:
        raise NotImplementedError

    def device_of(self, array: Any) -> str:
        return "cpu"

    def dtype(self, name: str) -> Any:
        raise NotImplementedError

    def vjp(self, function: Callable[[Any], Any], x: Any, cotangent: Any) -> Any:
        raise NotImplementedError(f"{self.name} has no autodiff")

    @contextlib.contextmanager
    def precision(self, needs_64bit: bool) -> Iterator[None]:
        """Context in which 64-bit arrays exist (JAX: x64); a no-op elsewhere."""
        yield

    def synchronize(self, value: Any) -> Any:
        return value

    def call(self, function: Callable[..., Any], *arrays: Any, allow_eager: bool = False) -> Any:
        """function(*arrays), compiled the framework's way (JAX: under jit)."""
        return function(*arrays)

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """The framework's compiler around an outside function (``check --compile``)."""
        raise NotImplementedError(f"{self.name} has no compiler (--compile needs PyTorch or JAX)")

    @contextlib.contextmanager
    def autocast(self, dtype: str | None, device: str = "cpu") -> Iterator[None]:
        """The framework's mixed-precision mode on ``device`` (``check --autocast``); a no-op for None."""
        if dtype is not None:
            raise NotImplementedError(f"{self.name} has no autocast (--autocast needs PyTorch or Keras code)")
        yield

    def aliases(self, output: Any, array: Any) -> bool:
        """Whether ``output`` is ``array`` or a view of its memory (SPEC.md section 5: a new array)."""
        return output is array

    def is_integer(self, array: Any) -> bool:
        return bool(np.asarray(self.to_numpy(array)).dtype.kind in "iu")


class NumpyFramework(Framework):
    name = "numpy"

    def to_native(self, array: np.ndarray, device: str) -> Any:
        return array.copy()

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def is_native(self, value: object) -> bool:
        return isinstance(value, np.ndarray)

    def dtype(self, name: str) -> Any:
        from .cases import numpy_dtype

        return numpy_dtype(name)

    def aliases(self, output: Any, array: Any) -> bool:
        return output is array or (isinstance(output, np.ndarray) and np.shares_memory(output, array))


class StrictFramework(Framework):
    """array-api-strict: the standard's dtypes only (no float16, no bfloat16)."""

    name = "array_api_strict"
    dtypes = ("float32", "float64")

    def _xp(self) -> Any:
        import array_api_strict

        return array_api_strict

    def to_native(self, array: np.ndarray, device: str) -> Any:
        return self._xp().asarray(array.copy())

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.from_dlpack(array).copy()

    def is_native(self, value: object) -> bool:
        return type(value).__module__.startswith("array_api_strict")

    def dtype(self, name: str) -> Any:
        return getattr(self._xp(), name)


class JaxFramework(Framework):
    name = "jax"
    devices = ("cpu", "cuda", "tpu")
    has_autodiff = True
    mutable = False
    _PLATFORMS: ClassVar[dict[str, str]] = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}

    def _jax(self) -> Any:
        import jax

        return jax

    def _device(self, device: str) -> Any:
        jax = self._jax()
        return jax.devices(self._PLATFORMS[device])[0]

    def present(self, device: str) -> bool:
        if device not in self._PLATFORMS:
            return False
        try:
            return bool(self._jax().devices(self._PLATFORMS[device]))
        except RuntimeError:
            return False

    def device_description(self, device: str) -> str:
        return str(getattr(self._device(device), "device_kind", device))

    def to_native(self, array: np.ndarray, device: str) -> Any:
        jax = self._jax()
        if not jax.config.jax_enable_x64 and array.dtype.itemsize == 8:
            if array.dtype.kind in "iu" and np.abs(array).max(initial=0) < 2**31:
                array = array.astype(np.int32)
            else:
                raise TypeError(f"{array.dtype} array needs jax_enable_x64")
        return jax.device_put(array, self._device(device))

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def is_native(self, value: object) -> bool:
        return isinstance(value, self._jax().Array)

    def device_of(self, array: Any) -> str:
        platforms = {d.platform for d in array.devices()}
        names = {"gpu": "cuda", "cuda": "cuda", "rocm": "cuda", "cpu": "cpu", "tpu": "tpu"}
        return ",".join(sorted(names.get(p, p) for p in platforms))

    def dtype(self, name: str) -> Any:
        import jax.numpy as jnp

        return getattr(jnp, name)

    def vjp(self, function: Callable[[Any], Any], x: Any, cotangent: Any) -> Any:
        _, pullback = self._jax().vjp(function, x)
        (grad,) = pullback(cotangent)
        return grad

    @contextlib.contextmanager
    def precision(self, needs_64bit: bool) -> Iterator[None]:
        jax = self._jax()
        before = bool(jax.config.jax_enable_x64)
        jax.config.update("jax_enable_x64", needs_64bit)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", before)

    def synchronize(self, value: Any) -> Any:
        return self._jax().block_until_ready(value)

    def call(self, function: Callable[..., Any], *arrays: Any, allow_eager: bool = False) -> Any:
        """Under jax.jit (the parameters are Python values closed over, hence static). With
        allow_eager, a function that cannot be traced (it reads array values in Python) runs eagerly."""
        jax = self._jax()
        try:
            return jax.jit(function)(*arrays)
        except jax.errors.JAXTypeError:
            if not allow_eager:
                raise
            self.eager_calls += 1
            return function(*arrays)

    eager_calls = 0

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return function  # call() runs it under jax.jit; with --compile it never falls back to eager


class TorchFramework(Framework):
    name = "torch"
    devices = ("cpu", "cuda", "mps")
    has_autodiff = True

    def _torch(self) -> Any:
        import torch

        return torch

    def present(self, device: str) -> bool:
        torch = self._torch()
        if device == "cpu":
            return True
        if device == "cuda":
            return bool(torch.cuda.is_available())
        if device == "mps":
            return bool(torch.backends.mps.is_available())
        return False

    def unsupported(self, dtype: str, device: str) -> str | None:
        if device == "mps" and dtype == "float64":
            return "MPS has no float64"
        return super().unsupported(dtype, device)

    def device_description(self, device: str) -> str:
        torch = self._torch()
        if device == "cuda":
            return str(torch.cuda.get_device_name(0))
        return device

    def to_native(self, array: np.ndarray, device: str) -> Any:
        torch = self._torch()
        if array.dtype.name == "bfloat16":
            tensor = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array.copy())
        return tensor.to(device)

    def to_numpy(self, array: Any) -> np.ndarray:
        torch = self._torch()
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            from .cases import numpy_dtype

            return array.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
        return array.numpy()

    def is_native(self, value: object) -> bool:
        return isinstance(value, self._torch().Tensor)

    def device_of(self, array: Any) -> str:
        return str(array.device.type)

    def dtype(self, name: str) -> Any:
        return getattr(self._torch(), name)

    def vjp(self, function: Callable[[Any], Any], x: Any, cotangent: Any) -> Any:
        torch = self._torch()
        x = x.detach().clone().requires_grad_(True)
        out = function(x)
        (grad,) = torch.autograd.grad(out, x, cotangent)
        return grad

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return self._torch().compile(function)  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def autocast(self, dtype: str | None, device: str = "cpu") -> Iterator[None]:
        if dtype is None:
            yield
            return
        torch = self._torch()
        with torch.autocast(device, dtype=getattr(torch, dtype)):
            yield

    def aliases(self, output: Any, array: Any) -> bool:
        torch = self._torch()
        if output is array:
            return True
        if not (isinstance(output, torch.Tensor) and isinstance(array, torch.Tensor)):
            return False
        if output.numel() == 0 or array.numel() == 0:
            return False
        return bool(output.untyped_storage().data_ptr() == array.untyped_storage().data_ptr())

    def synchronize(self, value: Any) -> Any:
        torch = self._torch()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return value


# ---------------------------------------------------------------------------------------------
# Keras 3: the backend's arrays, Keras's mixed precision

KERAS_PACKAGES = ("keras", "keras_hub", "keras_nlp", "keras_cv", "keras_rs")
OTHER_ARRAY_LIBRARIES = ("torch", "jax", "jaxlib", "flax", "tensorflow")


class KerasPolicy(Framework):
    """Keras 3 code: ``autocast`` sets Keras's global dtype policy (``mixed_bfloat16``, ``mixed_float16``)
    for the duration of the block and restores the one before (Keras's own mixed precision: layers
    built under it compute in the 16-bit dtype, and code reading the policy's compute dtype uses it)."""

    backend = ""

    def label(self) -> str:
        return f"keras ({self.backend} backend)"

    @contextlib.contextmanager
    def autocast(self, dtype: str | None, device: str = "cpu") -> Iterator[None]:
        if dtype is None:
            yield
            return
        import keras

        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(f"mixed_{dtype}")
        try:
            yield
        finally:
            keras.config.set_dtype_policy(previous)


class KerasTorchFramework(KerasPolicy, TorchFramework):
    backend = "torch"


class KerasJaxFramework(KerasPolicy, JaxFramework):
    backend = "jax"


class KerasNumpyFramework(KerasPolicy, NumpyFramework):
    backend = "numpy"


KERAS_BACKENDS: dict[str, Callable[[], Framework]] = {
    "torch": KerasTorchFramework,
    "jax": KerasJaxFramework,
    "numpy": KerasNumpyFramework,
}


def keras_framework() -> Framework:
    """The framework of Keras code: the arrays of Keras's backend, Keras's dtype policy as autocast.
    Imports keras (its backend is chosen by ``KERAS_BACKEND`` before that)."""
    import keras

    backend = keras.backend.backend()
    if backend not in KERAS_BACKENDS:
        raise NotImplementedError(
            f"Keras's {backend} backend is not supported: set KERAS_BACKEND to one of {', '.join(KERAS_BACKENDS)}"
        )
    return KERAS_BACKENDS[backend]()


def _package(value: object) -> str:
    """The top-level package a module, class or function belongs to ("" when none)."""
    name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
    return name.split(".")[0] if isinstance(name, str) else ""


def _owner(function: object) -> object | None:
    """The class a function is defined in (from its qualified name), or an object's class."""
    if inspect.isclass(function):
        return function
    if inspect.ismethod(function):
        return type(function.__self__)
    if inspect.isfunction(function):
        owner: object = sys.modules.get(function.__module__)
        path = function.__qualname__.split(".")[:-1]
        if not path or "<locals>" in path:
            return None
        for part in path:
            owner = getattr(owner, part, None)
        return owner if inspect.isclass(owner) else None
    return type(function)


def keras_layer_class(function: object) -> type | None:
    """The Keras layer class ``function`` is (a layer class), belongs to (a layer or one of its
    methods), or None. Never imports keras: code that uses it has imported it."""
    keras = sys.modules.get("keras")
    owner = _owner(function)
    layer = getattr(getattr(keras, "layers", None), "Layer", None)
    if layer is None or not inspect.isclass(owner) or not issubclass(owner, layer):
        return None
    return owner


def uses_keras(function: object) -> bool:
    """Whether ``function`` is Keras code: a Keras layer or one of its methods, code of a Keras package,
    or a function whose module uses Keras and no other array library of its own (torch, jax...)."""
    if "keras" not in sys.modules:
        return False
    if keras_layer_class(function) is not None:
        return True
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else type(function).__call__
    if _package(function) in KERAS_PACKAGES or _package(target) in KERAS_PACKAGES:
        return True
    namespace = getattr(inspect.unwrap(target), "__globals__", {})  # type: ignore[arg-type]
    packages = {_package(v) for v in namespace.values() if inspect.ismodule(v) or callable(v)}
    return bool(packages & set(KERAS_PACKAGES)) and not packages & set(OTHER_ARRAY_LIBRARIES)


FRAMEWORKS: dict[str, Callable[[], Framework]] = {
    "numpy": NumpyFramework,
    "array_api_strict": StrictFramework,
    "jax": JaxFramework,
    "torch": TorchFramework,
    "keras": keras_framework,
}


def framework(name: str) -> Framework:
    return FRAMEWORKS[name]()
