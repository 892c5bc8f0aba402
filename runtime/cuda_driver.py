"""The CUDA driver API (libcuda.so.1, which every NVIDIA driver installs) through ctypes: what the
TensorRT-RTX plugins (load a PTX kernel, launch it) and the plan runner (a context, device buffers,
a stream) need, without torch, cuda-python or a CUDA toolkit.

NOT VERIFIED HERE: this workplace has no GPU and no CUDA driver; only the refusal without one runs.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .errors import BackendUnavailableError

MAX_STATIC_SHARED = 48 * 1024                   # beyond it a kernel must opt in to dynamic shared memory
_ATTR_MAX_DYNAMIC_SHARED = 8                    # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76         # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR

_lib: ctypes.CDLL | None = None


def driver() -> ctypes.CDLL:
    """libcuda, initialised. BackendUnavailableError where there is no driver or no device."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise BackendUnavailableError("no CUDA driver here (libcuda.so.1 cannot be loaded)") from None
        if lib.cuInit(0) != 0:
            raise BackendUnavailableError("the CUDA driver found no usable GPU (cuInit failed)")
        _lib = lib
    return _lib


def check(status: int, what: str) -> None:
    if status != 0:
        name = ctypes.c_char_p()
        driver().cuGetErrorName(status, ctypes.byref(name))
        raise RuntimeError(f"CUDA {what} failed: {(name.value or b'error %d' % status).decode()}")


def use_primary_context(device: int = 0) -> tuple[int, int]:
    """Make device's primary context current on this thread; returns its compute capability."""
    lib, dev, ctx = driver(), ctypes.c_int(), ctypes.c_void_p()
    check(lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
    check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev), "cuDeviceGetAttribute")
    check(lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev), "cuDeviceGetAttribute")
    return major.value, minor.value


class DeviceBuffer:
    """nbytes of device memory (at least 1 byte), freed with the object."""

    def __init__(self, nbytes: int):
        self.ptr = ctypes.c_uint64()
        check(driver().cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")

    def upload(self, host: np.ndarray, stream: int) -> None:
        check(driver().cuMemcpyHtoDAsync_v2(self.ptr, host.ctypes.data_as(ctypes.c_void_p),
                                            ctypes.c_size_t(host.nbytes), ctypes.c_void_p(stream)), "cuMemcpyHtoD")

    def download(self, host: np.ndarray, stream: int) -> None:
        check(driver().cuMemcpyDtoHAsync_v2(host.ctypes.data_as(ctypes.c_void_p), self.ptr,
                                            ctypes.c_size_t(host.nbytes), ctypes.c_void_p(stream)), "cuMemcpyDtoH")

    def __del__(self):
        if _lib is not None and self.ptr.value:
            _lib.cuMemFree_v2(self.ptr)


def create_stream() -> int:
    stream = ctypes.c_void_p()
    check(driver().cuStreamCreate(ctypes.byref(stream), 0), "cuStreamCreate")
    return stream.value or 0


def synchronize(stream: int) -> None:
    check(driver().cuStreamSynchronize(ctypes.c_void_p(stream)), "cuStreamSynchronize")


def load_kernel(ptx: str, name: str, shared_mem: int) -> ctypes.c_void_p:
    """The function `name` of a PTX module, loaded (JIT-compiled by the driver) in the current context."""
    lib, module, function = driver(), ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx.encode() + b"\0")), "cuModuleLoadData")
    check(lib.cuModuleGetFunction(ctypes.byref(function), module, name.encode()), "cuModuleGetFunction")
    if shared_mem > MAX_STATIC_SHARED:
        check(lib.cuFuncSetAttribute(function, _ATTR_MAX_DYNAMIC_SHARED, shared_mem), "cuFuncSetAttribute")
    return function


def launch(function: ctypes.c_void_p, grid: tuple[int, ...], block_x: int, shared_mem: int, stream: int,
           args: list) -> None:
    """Launch on `stream` with args given as ctypes values (c_uint64 pointers, c_int32 scalars)."""
    gx, gy, gz = (*grid, 1, 1)[:3]
    params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
    check(driver().cuLaunchKernel(function, gx, gy, gz, block_x, 1, 1, shared_mem, ctypes.c_void_p(stream),
                                  params, None), "cuLaunchKernel")
