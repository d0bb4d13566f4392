//! Compiling the embedded sources with NVRTC to cubins for one `sm_XY`.
//!
//! `libnvrtc.so` is loaded at run time by cudarc (dynamic loading): it is looked up by the
//! dynamic linker under the names `libnvrtc.so`, `libnvrtc.so.13`, `libnvrtc.so.12`, ..., so its
//! directory must be on `LD_LIBRARY_PATH` (or in the linker cache). The pip wheel
//! `nvidia-cuda-nvrtc==13.0.88` puts it in `<site-packages>/nvidia/cu13/lib`. Its presence is
//! checked before the first NVRTC call, which would otherwise panic inside cudarc.
//!
//! Compiling to a cubin of the real architecture (not PTX) runs ptxas at build time, so the
//! NVRTC test catches instruction/architecture mismatches too, and the driver loads the result
//! without a JIT step and without needing to be as new as NVRTC's PTX ISA.

use super::arch::GpuArch;
use super::error::CudaError;
use super::source::{HEADERS, KernelSource};

/// A compiled source: the cubin and NVRTC's log (empty when clean).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledKernel {
    /// The source file.
    pub file: &'static str,
    /// The architecture it was compiled for.
    pub arch: GpuArch,
    /// The cubin (an ELF image the driver loads).
    pub cubin: Vec<u8>,
    /// The PTX NVRTC generated on the way to the cubin (the NVRTC test reads each entry point's
    /// parameter list from it).
    pub ptx: String,
    /// NVRTC's program log (warnings on success).
    pub log: String,
}

impl CompiledKernel {
    /// The log lines that are warnings.
    pub fn warnings(&self) -> Vec<&str> {
        self.log.lines().filter(|l| l.contains("warning")).collect()
    }

    /// The PTX types of entry point `name`'s parameters, in order (`.u64` for a pointer or a
    /// `long long`, `.u32` for an `int`, `.f32` for a `float`); `None` if the PTX has no such
    /// entry.
    pub fn entry_param_types(&self, name: &str) -> Option<Vec<&str>> {
        ptx_entry_param_types(&self.ptx, name)
    }
}

/// [`CompiledKernel::entry_param_types`] of PTX text `ptx`: the first word after `.param` of
/// each parameter of `.entry name(...)`.
fn ptx_entry_param_types<'a>(ptx: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let header = format!(".entry {name}(");
    let start = ptx.find(&header)? + header.len();
    let list = &ptx[start..start + ptx[start..].find(')')?];
    list.split(',')
        .map(str::trim)
        .filter(|param| !param.is_empty())
        .map(|param| param.strip_prefix(".param")?.split_whitespace().next())
        .collect()
}

/// The NVRTC options every source is compiled with for `arch`.
pub fn compile_options(arch: GpuArch) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_owned()]
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    backend::version()
}

/// Compiles `source` (with [`HEADERS`]) for `arch`. A failure carries NVRTC's log; warnings
/// are in [`CompiledKernel::log`].
pub fn compile(source: &KernelSource, arch: GpuArch) -> Result<CompiledKernel, CudaError> {
    compile_with(source, arch, compile_options(arch))
}

/// [`compile`], with ptxas's resource report in the log (`--ptxas-options=-v`: per entry point
/// the registers, shared memory, stack frame and spill bytes), the same cubin otherwise. For
/// checking without a GPU that every launch fits the hardware (kernels/tests/nvrtc.rs).
pub fn compile_with_resource_report(source: &KernelSource, arch: GpuArch) -> Result<CompiledKernel, CudaError> {
    let mut options = compile_options(arch);
    options.push("--ptxas-options=-v".to_owned());
    compile_with(source, arch, options)
}

fn compile_with(source: &KernelSource, arch: GpuArch, options: Vec<String>) -> Result<CompiledKernel, CudaError> {
    let (cubin, ptx, log) = backend::compile(source, &HEADERS, arch, &options)?;
    Ok(CompiledKernel { file: source.file, arch, cubin, ptx, log })
}

#[cfg(feature = "cuda")]
mod backend {
    use std::ffi::{CString, c_char, c_int};

    use cudarc::nvrtc::{result, sys};

    use super::{CudaError, GpuArch, KernelSource};
    use crate::cuda::error::NVRTC_HINT;

    fn ensure_loaded() -> Result<(), CudaError> {
        // SAFETY: only tries to dlopen the library under its candidate names.
        if unsafe { sys::is_culib_present() } {
            Ok(())
        } else {
            Err(CudaError::LibraryNotFound { library: "libnvrtc.so", hint: NVRTC_HINT })
        }
    }

    fn c_string(what: &str, s: &str) -> Result<CString, CudaError> {
        CString::new(s).map_err(|_| CudaError::InvalidArgument {
            what: "source",
            value: s.len(),
            reason: if what == "name" { "file name contains NUL" } else { "source contains NUL" },
        })
    }

    pub(super) fn version() -> Result<(i32, i32), CudaError> {
        ensure_loaded()?;
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: the library is loaded; both pointers are valid for the call.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| CudaError::Driver { call: "nvrtcVersion".into(), message: format!("{:?}", e.0) })?;
        Ok((major, minor))
    }

    /// Destroys the program when dropped.
    struct Program(sys::nvrtcProgram);

    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created by nvrtcCreateProgram and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }

    fn c_chars_to_string(chars: &[c_char]) -> String {
        let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    }

    pub(super) fn compile(
        source: &KernelSource,
        headers: &[KernelSource],
        arch: GpuArch,
        options: &[String],
    ) -> Result<(Vec<u8>, String, String), CudaError> {
        ensure_loaded()?;
        let fail = |call: &str, e: result::NvrtcError| CudaError::Driver {
            call: format!("{call} ({})", source.file),
            message: format!("{:?}", e.0),
        };
        let text = c_string("source", source.text)?;
        let name = c_string("name", source.file)?;
        let header_texts = headers.iter().map(|h| c_string("source", h.text)).collect::<Result<Vec<_>, _>>()?;
        let header_names = headers.iter().map(|h| c_string("name", h.file)).collect::<Result<Vec<_>, _>>()?;
        let text_ptrs: Vec<*const c_char> = header_texts.iter().map(|c| c.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();
        let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a NUL-terminated string (or an array of `headers.len()` of
        // them) that outlives the program, which NVRTC may reference until it is destroyed.
        unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                text.as_ptr(),
                name.as_ptr(),
                headers.len() as c_int,
                text_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
            )
        }
        .result()
        .map_err(|e| fail("nvrtcCreateProgram", e))?;
        let program = Program(raw);
        // SAFETY: `program` was created above and is alive.
        let status = unsafe { result::compile_program(program.0, options) };
        // SAFETY: as above; the log exists after a compile attempt, successful or not.
        let log = unsafe { result::get_program_log(program.0) }
            .map(|l| c_chars_to_string(&l))
            .map_err(|e| fail("nvrtcGetProgramLog", e))?;
        if let Err(e) = status {
            return Err(CudaError::Compile { file: source.file, arch, status: format!("{:?}", e.0), log });
        }
        let mut size = 0usize;
        // SAFETY: compiled program, valid out-pointer.
        unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }.result().map_err(|e| fail("nvrtcGetCUBINSize", e))?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` has the `size` bytes NVRTC reported.
        unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| fail("nvrtcGetCUBIN", e))?;
        // SAFETY: as above.
        let ptx = unsafe { result::get_ptx(program.0) }.map_err(|e| fail("nvrtcGetPTX", e))?;
        Ok((cubin, c_chars_to_string(&ptx), log))
    }
}

#[cfg(not(feature = "cuda"))]
mod backend {
    use super::{CudaError, GpuArch, KernelSource};

    pub(super) fn version() -> Result<(i32, i32), CudaError> {
        Err(CudaError::NotBuilt)
    }

    pub(super) fn compile(
        _source: &KernelSource,
        _headers: &[KernelSource],
        _arch: GpuArch,
        _options: &[String],
    ) -> Result<(Vec<u8>, String, String), CudaError> {
        Err(CudaError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::ptx_entry_param_types;

    /// NVRTC 13's PTX for `k(const float* x, int n, long long m, float s, unsigned* o)`.
    const PTX: &str = ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t\
                       .param .u64 k_param_2,\n\t.param .f32 k_param_3,\n\t.param .u64 .ptr .global \
                       .align 4 k_param_4\n)\n{\n\tret;\n}\n.visible .entry none(\n)\n{\n}\n";

    #[test]
    fn ptx_entry_parameters_are_read_in_order() {
        assert_eq!(ptx_entry_param_types(PTX, "k"), Some(vec![".u64", ".u32", ".u64", ".f32", ".u64"]));
        assert_eq!(ptx_entry_param_types(PTX, "none"), Some(vec![]));
        assert_eq!(ptx_entry_param_types(PTX, "missing"), None);
        assert_eq!(ptx_entry_param_types(".entry broken(\n\t.param .u64 b_param_0", "broken"), None);
        assert_eq!(ptx_entry_param_types(".entry odd(\n\t.reg .u64 x\n)", "odd"), None);
    }
}
