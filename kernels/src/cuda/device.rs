//! [`CudaDevice`] (one context and one stream per device, the compiled-module cache) and
//! [`DeviceBuffer`] (device memory owned by one device handle).
//!
//! All work of a device handle runs on its one stream, in call order: a kernel sees the results
//! of every earlier call, buffers are freed stream-ordered after the kernels that use them, and
//! only [`CudaDevice::download`] and [`CudaDevice::synchronize`] wait for the GPU. That single
//! stream is why cudarc's per-buffer event tracking is switched off (it only serves
//! cross-stream synchronization and would record an event per kernel argument).

use std::sync::atomic::{AtomicU64, Ordering};

use super::arch::GpuArch;
use super::error::CudaError;
use super::launch::LaunchDims;
use super::source::{KernelFn, Param, SOURCES};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// Element types that device buffers hold. `u16` carries f16 bits (the optional f16 output).
#[cfg(feature = "cuda")]
pub trait DeviceElem:
    cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Default + Copy + Send + Sync + 'static
{
}
/// Element types that device buffers hold. `u16` carries f16 bits (the optional f16 output).
#[cfg(not(feature = "cuda"))]
pub trait DeviceElem: Default + Copy + Send + Sync + 'static {}

impl DeviceElem for f32 {}
impl DeviceElem for i8 {}
impl DeviceElem for i32 {}
impl DeviceElem for u32 {}
impl DeviceElem for u16 {}

/// A kernel argument: a device pointer (0 = null) or a scalar, in the kernel's parameter order.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    /// The parameter kind this argument fills.
    fn param(self) -> Param {
        match self {
            Arg::Ptr(_) => Param::Ptr,
            Arg::I32(_) => Param::I32,
            Arg::I64(_) => Param::I64,
            Arg::F32(_) => Param::F32,
        }
    }
}

/// Checks that `args` follow `f`'s parameter list, kind by kind: the driver copies each
/// parameter's size in bytes from the argument array, so a missing or narrower argument would
/// be read from beyond it, on a GPU as on the CPU.
fn check_launch_args(f: KernelFn, args: &[Arg]) -> Result<(), CudaError> {
    if args.iter().map(|a| a.param()).eq(f.params.iter().copied()) {
        return Ok(());
    }
    let passed: Vec<Param> = args.iter().map(|a| a.param()).collect();
    let list = |kinds: &[Param]| kinds.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    Err(CudaError::LaunchArguments { kernel: f.name, expected: list(f.params), passed: list(&passed) })
}

/// Device memory of `len` elements of `T`, owned by the [`CudaDevice`] that made it.
pub struct DeviceBuffer<T: DeviceElem> {
    device_id: u64,
    len: usize,
    inner: backend::Buffer<T>,
}

impl<T: DeviceElem> DeviceBuffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a kernel argument.
    pub(crate) fn arg(&self) -> Arg {
        Arg::Ptr(backend::device_ptr(&self.inner))
    }
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("device_id", &self.device_id).field("len", &self.len).finish()
    }
}

/// One GPU: its context, its stream and the kernels compiled for its architecture.
pub struct CudaDevice {
    id: u64,
    ordinal: usize,
    arch: GpuArch,
    name: String,
    sm_count: usize,
    memory_bytes: u64,
    driver_cuda_version: (u32, u32),
    inner: backend::Device,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .field("sm_count", &self.sm_count)
            .field("memory_bytes", &self.memory_bytes)
            .field("driver_cuda_version", &self.driver_cuda_version)
            .finish()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: checks that the driver library exists (else
    /// [`CudaError::LibraryNotFound`]), creates a context and a stream, and reads the
    /// architecture (sm_75 or newer, else [`CudaError::UnsupportedArch`]). Kernels are compiled
    /// on first use; [`preload`](Self::preload) compiles them all now.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let (inner, info) = backend::open(ordinal)?;
        let arch = GpuArch::new(info.major, info.minor);
        if !arch.is_supported() {
            return Err(CudaError::UnsupportedArch { arch, reason: "the int8 kernels need sm_75 (Turing) or newer" });
        }
        let id = NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed);
        Ok(CudaDevice {
            id,
            ordinal,
            arch,
            name: info.name,
            sm_count: info.sm_count,
            memory_bytes: info.memory_bytes,
            driver_cuda_version: info.driver_cuda_version,
            inner,
        })
    }

    /// Number of CUDA devices (an error when there is no driver, or without the `cuda` feature).
    pub fn count() -> Result<usize, CudaError> {
        backend::count()
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Architecture (`sm_XY`) the kernels are compiled for.
    pub fn arch(&self) -> GpuArch {
        self.arch
    }

    /// The driver's device name (e.g. `NVIDIA H200`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Total device memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// The newest CUDA version the installed driver supports (`cuDriverGetVersion`), e.g.
    /// `(12, 4)`.
    pub fn driver_cuda_version(&self) -> (u32, u32) {
        self.driver_cuda_version
    }

    /// Compiles (or loads from the caches) every kernel module, so later calls and timings do
    /// not include NVRTC.
    pub fn preload(&self) -> Result<(), CudaError> {
        SOURCES.iter().try_for_each(|s| backend::module(&self.inner, self.arch, s).map(|_| ()))
    }

    /// Copies `host` to new device memory.
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> Result<DeviceBuffer<T>, CudaError> {
        Ok(DeviceBuffer { device_id: self.id, len: host.len(), inner: backend::upload(&self.inner, host)? })
    }

    /// New zeroed device memory of `len` elements.
    pub fn zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>, CudaError> {
        Ok(DeviceBuffer { device_id: self.id, len, inner: backend::zeros(&self.inner, len)? })
    }

    /// Waits for all queued work and copies `buffer` back.
    pub fn download<T: DeviceElem>(&self, buffer: &DeviceBuffer<T>) -> Result<Vec<T>, CudaError> {
        self.check("buffer", buffer, 0)?;
        backend::download(&self.inner, &buffer.inner, buffer.len)
    }

    /// Waits for all queued work (and reports an asynchronous kernel fault, if any).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        backend::synchronize(&self.inner)
    }

    /// Checks that `buffer` belongs to this device and holds at least `min_len` elements.
    pub(crate) fn check<T: DeviceElem>(
        &self,
        what: &'static str,
        buffer: &DeviceBuffer<T>,
        min_len: usize,
    ) -> Result<(), CudaError> {
        if buffer.device_id != self.id {
            return Err(CudaError::WrongDevice { what });
        }
        if buffer.len < min_len {
            return Err(CudaError::Kernel(crate::KernelError::ShapeMismatch {
                what,
                expected: min_len,
                found: buffer.len,
            }));
        }
        Ok(())
    }

    /// The id that ties buffers and layers to this handle.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Launches `f` with `args`, which must match its C parameter list (types and order); every
    /// pointer must come from a buffer of this device checked to cover what the kernel touches.
    pub(crate) fn launch(&self, f: KernelFn, dims: LaunchDims, args: &[Arg]) -> Result<(), CudaError> {
        check_launch_args(f, args)?;
        backend::launch(&self.inner, self.arch, f, dims, args)
    }
}

/// What the backend reads from a newly opened device.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct DeviceInfo {
    major: u32,
    minor: u32,
    name: String,
    sm_count: usize,
    memory_bytes: u64,
    driver_cuda_version: (u32, u32),
}

/// `cuDriverGetVersion`'s number (1000 major + 10 minor) as (major, minor).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn split_cuda_version(version: i32) -> (u32, u32) {
    let v = version.max(0) as u32;
    (v / 1000, (v % 1000) / 10)
}

#[cfg(feature = "cuda")]
mod backend {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use cudarc::driver::sys::CUdevice_attribute;
    use cudarc::driver::{
        CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
        PushKernelArg,
    };
    use cudarc::nvrtc::Ptx;

    use super::{Arg, DeviceElem, DeviceInfo};
    use crate::cuda::arch::GpuArch;
    use crate::cuda::cache;
    use crate::cuda::error::{CudaError, DRIVER_HINT};
    use crate::cuda::launch::LaunchDims;
    use crate::cuda::nvrtc;
    use crate::cuda::source::{HEADERS, KernelFn, KernelSource};

    pub(super) struct Device {
        stream: Arc<CudaStream>,
        modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
        functions: Mutex<HashMap<&'static str, CudaFunction>>,
    }

    pub(super) struct Buffer<T> {
        slice: CudaSlice<T>,
    }

    fn driver(call: &str) -> impl Fn(DriverError) -> CudaError + '_ {
        move |e| CudaError::Driver { call: call.to_owned(), message: e.to_string() }
    }

    fn ensure_driver() -> Result<(), CudaError> {
        // SAFETY: only tries to dlopen the driver library under its candidate names; cudarc
        // panics on the first driver call when it is missing, so this runs first.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            Ok(())
        } else {
            Err(CudaError::LibraryNotFound { library: "libcuda.so", hint: DRIVER_HINT })
        }
    }

    pub(super) fn count() -> Result<usize, CudaError> {
        ensure_driver()?;
        CudaContext::device_count().map(|c| c.max(0) as usize).map_err(driver("cuDeviceGetCount"))
    }

    pub(super) fn open(ordinal: usize) -> Result<(Device, DeviceInfo), CudaError> {
        ensure_driver()?;
        let ctx = CudaContext::new(ordinal).map_err(driver("cuInit / cuDevicePrimaryCtxRetain"))?;
        // SAFETY: every buffer of this handle is allocated, used and freed on `stream` only
        // (see the module docs), so no cross-stream synchronization is left to manage.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(driver("cuDeviceGetName"))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("cuDeviceGetAttribute"))?;
        let memory_bytes = ctx.total_mem().map_err(driver("cuDeviceTotalMem"))? as u64;
        let mut version: std::ffi::c_int = 0;
        // SAFETY: the driver library is loaded (ensure_driver) and initialized (the context
        // above); the out-pointer is valid for the call.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(driver("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            major: major as u32,
            minor: minor as u32,
            name,
            sm_count: sm_count.max(1) as usize,
            memory_bytes,
            driver_cuda_version: super::split_cuda_version(version),
        };
        Ok((Device { stream, modules: Mutex::default(), functions: Mutex::default() }, info))
    }

    /// The module of `source`: from memory, else the disk cache, else NVRTC (then cached).
    pub(super) fn module(dev: &Device, arch: GpuArch, source: &KernelSource) -> Result<Arc<CudaModule>, CudaError> {
        let mut modules = dev.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(source.file) {
            return Ok(m.clone());
        }
        let ctx = dev.stream.context();
        let key = cache::cache_key(source, &HEADERS, arch, &nvrtc::compile_options(arch), nvrtc::nvrtc_version()?);
        let file = cache::cache_file_name(source, arch, key);
        let dir = cache::cache_dir();
        let cached = dir.as_deref().and_then(|d| cache::read_cached(d, &file));
        let module = match cached.and_then(|cubin| ctx.load_module(Ptx::from_binary(cubin)).ok()) {
            Some(m) => m,
            None => {
                let compiled = nvrtc::compile(source, arch)?;
                if let Some(d) = &dir {
                    // The disk cache only saves time: a read-only or full disk is not an error.
                    let _ = cache::write_cached(d, &file, &compiled.cubin);
                }
                ctx.load_module(Ptx::from_binary(compiled.cubin)).map_err(driver("cuModuleLoadData"))?
            }
        };
        modules.insert(source.file, module.clone());
        Ok(module)
    }

    fn function(dev: &Device, arch: GpuArch, f: KernelFn) -> Result<CudaFunction, CudaError> {
        if let Some(func) = dev.functions.lock().unwrap_or_else(|e| e.into_inner()).get(f.name) {
            return Ok(func.clone());
        }
        let func = module(dev, arch, &f.source)?.load_function(f.name).map_err(driver("cuModuleGetFunction"))?;
        dev.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(f.name, func.clone());
        Ok(func)
    }

    pub(super) fn launch(
        dev: &Device,
        arch: GpuArch,
        f: KernelFn,
        dims: LaunchDims,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let func = function(dev, arch, f)?;
        let cfg = LaunchConfig { grid_dim: dims.grid, block_dim: dims.block, shared_mem_bytes: dims.shared_bytes };
        let mut builder = dev.stream.launch_builder(&func);
        for arg in args {
            match arg {
                Arg::Ptr(p) => builder.arg(p),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        // SAFETY: `args` follows the kernel's C parameter list (each call site mirrors the
        // declaration in its .cu file); its pointers come from live buffers of this device whose
        // lengths the caller checked against every index the kernel touches; and the kernel is
        // ordered on this device's one stream before any later free of those buffers.
        unsafe { builder.launch(cfg) }
            .map_err(|e| CudaError::Driver { call: format!("launch {}", f.name), message: e.to_string() })?;
        Ok(())
    }

    pub(super) fn device_ptr<T>(buffer: &Buffer<T>) -> u64 {
        // Event tracking is off (see `open`), so the returned guard records nothing.
        let (ptr, _guard) = buffer.slice.device_ptr(buffer.slice.stream());
        ptr
    }

    pub(super) fn upload<T: DeviceElem>(dev: &Device, host: &[T]) -> Result<Buffer<T>, CudaError> {
        if host.is_empty() {
            return zeros(dev, 0);
        }
        Ok(Buffer { slice: dev.stream.clone_htod(host).map_err(driver("cuMemcpyHtoDAsync"))? })
    }

    pub(super) fn zeros<T: DeviceElem>(dev: &Device, len: usize) -> Result<Buffer<T>, CudaError> {
        // Zero-length allocations are not portable: keep one element.
        Ok(Buffer { slice: dev.stream.alloc_zeros(len.max(1)).map_err(driver("cuMemAllocAsync"))? })
    }

    pub(super) fn download<T: DeviceElem>(dev: &Device, buffer: &Buffer<T>, len: usize) -> Result<Vec<T>, CudaError> {
        let mut v = dev.stream.clone_dtoh(&buffer.slice).map_err(driver("cuMemcpyDtoHAsync"))?;
        dev.stream.synchronize().map_err(driver("cuStreamSynchronize"))?;
        v.truncate(len);
        Ok(v)
    }

    pub(super) fn synchronize(dev: &Device) -> Result<(), CudaError> {
        dev.stream.synchronize().map_err(driver("cuStreamSynchronize"))
    }
}

#[cfg(not(feature = "cuda"))]
mod backend {
    //! Built without CUDA: no device can be opened, so the handle and buffer types are
    //! uninhabited and every entry point that would need one returns [`CudaError::NotBuilt`].
    use std::convert::Infallible;
    use std::marker::PhantomData;

    use super::{Arg, DeviceElem, DeviceInfo};
    use crate::cuda::arch::GpuArch;
    use crate::cuda::error::CudaError;
    use crate::cuda::launch::LaunchDims;
    use crate::cuda::source::{KernelFn, KernelSource};

    pub(super) enum Device {}

    pub(super) struct Buffer<T> {
        never: Infallible,
        _elem: PhantomData<T>,
    }

    pub(super) fn count() -> Result<usize, CudaError> {
        Err(CudaError::NotBuilt)
    }

    pub(super) fn open(_ordinal: usize) -> Result<(Device, DeviceInfo), CudaError> {
        Err(CudaError::NotBuilt)
    }

    pub(super) fn module(dev: &Device, _arch: GpuArch, _source: &KernelSource) -> Result<(), CudaError> {
        match *dev {}
    }

    pub(super) fn launch(
        dev: &Device,
        _arch: GpuArch,
        _f: KernelFn,
        _dims: LaunchDims,
        _args: &[Arg],
    ) -> Result<(), CudaError> {
        match *dev {}
    }

    pub(super) fn device_ptr<T>(buffer: &Buffer<T>) -> u64 {
        match buffer.never {}
    }

    pub(super) fn upload<T: DeviceElem>(dev: &Device, _host: &[T]) -> Result<Buffer<T>, CudaError> {
        match *dev {}
    }

    pub(super) fn zeros<T: DeviceElem>(dev: &Device, _len: usize) -> Result<Buffer<T>, CudaError> {
        match *dev {}
    }

    pub(super) fn download<T: DeviceElem>(dev: &Device, _buffer: &Buffer<T>, _len: usize) -> Result<Vec<T>, CudaError> {
        match *dev {}
    }

    pub(super) fn synchronize(dev: &Device) -> Result<(), CudaError> {
        match *dev {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions_split_into_major_and_minor() {
        assert_eq!(split_cuda_version(12040), (12, 4));
        assert_eq!(split_cuda_version(13000), (13, 0));
        assert_eq!(split_cuda_version(-1), (0, 0));
    }

    #[test]
    fn a_launch_must_pass_the_kernels_parameter_kinds_in_order() {
        use crate::cuda::source::{GELU_ERF, KERNEL_FNS, RESIDUAL_ADD};
        assert_eq!(check_launch_args(GELU_ERF, &[Arg::Ptr(0), Arg::I64(4)]), Ok(()));
        // One missing, one too many, an int where a long long is, a float where a pointer is.
        for args in [
            &[Arg::Ptr(0)][..],
            &[Arg::Ptr(0), Arg::I64(4), Arg::I32(1)],
            &[Arg::Ptr(0), Arg::I32(4)],
            &[Arg::F32(0.0), Arg::I64(4)],
        ] {
            let error = check_launch_args(GELU_ERF, args).unwrap_err();
            assert!(matches!(error, CudaError::LaunchArguments { kernel: "qtier_gelu_erf", .. }), "{error}");
        }
        let error = check_launch_args(RESIDUAL_ADD, &[Arg::Ptr(0), Arg::I64(4)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "kernel qtier_residual_add takes (Ptr, Ptr, I64) but the launch passed (Ptr, I64)"
        );
        // Every kernel's own list passes.
        for f in KERNEL_FNS {
            let args: Vec<Arg> = f
                .params
                .iter()
                .map(|p| match p {
                    Param::Ptr => Arg::Ptr(0),
                    Param::I32 => Arg::I32(0),
                    Param::I64 => Arg::I64(0),
                    Param::F32 => Arg::F32(0.0),
                })
                .collect();
            assert_eq!(check_launch_args(*f, &args), Ok(()), "{}", f.name);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_cuda_feature_every_entry_point_says_not_built() {
        assert!(matches!(CudaDevice::new(0), Err(CudaError::NotBuilt)));
        assert!(matches!(CudaDevice::count(), Err(CudaError::NotBuilt)));
        let compiled = crate::cuda::nvrtc::compile(&crate::cuda::source::GEMM, GpuArch::SM90);
        assert_eq!(compiled, Err(CudaError::NotBuilt));
        assert!(CudaError::NotBuilt.to_string().contains("built without CUDA"));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn opening_a_device_never_panics() {
        // On a machine without a driver this is the clear error, not cudarc's panic; with a
        // driver but no device, a driver error; on a GPU host, a device.
        match CudaDevice::new(0) {
            Ok(dev) => assert!(dev.arch().is_supported()),
            Err(CudaError::LibraryNotFound { library, hint }) => {
                assert_eq!(library, "libcuda.so");
                assert!(hint.contains("no NVIDIA driver"));
            }
            Err(CudaError::Driver { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
}
