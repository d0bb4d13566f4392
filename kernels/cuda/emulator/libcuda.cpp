// A libcuda.so for tests: the CUDA driver API calls qtier's `cuda` feature makes (through cudarc),
// answered by the CPU emulator (emulator.cpp). With it on LD_LIBRARY_PATH, a build with
// `--features cuda` runs its real driver backend without a GPU: context and stream, device
// attributes, stream-ordered allocation, copies, modules (the cubins NVRTC compiled for the
// device's architecture, checked to be ELF files that hold the kernel asked for) and
// cuLaunchKernel with the driver's parameter array. Built by scripts/test.sh, with the flags of cxxflags.txt beside this file:
//
//   g++ $(grep -v '^#' cxxflags.txt) -O2 -shared -fPIC -o DIR/libcuda.so libcuda.cpp -lubsan
//
// Device 0 is an sm_75 with 40 multiprocessors (a T4), device 1 an sm_86 with 80 (an A10G), so
// the host picks each architecture's kernels.
// Everything runs synchronously on the calling thread; a failed launch prints the emulator's
// message on stderr and returns CUDA_ERROR_LAUNCH_FAILED, as a GPU's error would surface.

// One translation unit with the emulator: qtier_emu_launch_params, qtier_emu_has_kernel and
// qtier_emu_alloc / qtier_emu_free come from it.
#include "emulator.cpp"

namespace {

using CUresult = int;
constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_INVALID_VALUE = 1;
constexpr CUresult CUDA_ERROR_OUT_OF_MEMORY = 2;
constexpr CUresult CUDA_ERROR_NOT_INITIALIZED = 3;
constexpr CUresult CUDA_ERROR_INVALID_DEVICE = 101;
constexpr CUresult CUDA_ERROR_INVALID_IMAGE = 200;
constexpr CUresult CUDA_ERROR_NOT_FOUND = 500;
constexpr CUresult CUDA_ERROR_LAUNCH_FAILED = 719;
constexpr CUresult CUDA_ERROR_NOT_SUPPORTED = 801;

struct DeviceSpec {
    const char* name;
    int major, minor, sm_count;
};
constexpr DeviceSpec kDevices[] = {
    {"qtier CUDA emulator (CPU, libcuda shim), sm_75", 7, 5, 40},
    {"qtier CUDA emulator (CPU, libcuda shim), sm_86", 8, 6, 80},
};
constexpr int kDeviceCount = sizeof kDevices / sizeof kDevices[0];

struct Context {
    int device;
};
struct Stream {
    int unused;
};
struct Function {
    std::string name;
};
// A module owns the functions taken from it, which stay valid until it is unloaded (as in the
// driver).
struct Module {
    std::vector<unsigned char> image;
    std::vector<std::unique_ptr<Function>> functions;
};

std::mutex state_mutex;
bool initialized = false;
Context contexts[kDeviceCount] = {{0}, {1}};
thread_local Context* current = nullptr;
std::map<unsigned long long, size_t> allocations;

// The name and text of each error code this driver returns, for cuGetErrorName / cuGetErrorString.
struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};
constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure (see the emulator's message)"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};

ErrorText describe(CUresult error) {
    for (const ErrorText& e : kErrors) {
        if (e.code == error) {
            return e;
        }
    }
    return {error, "CUDA_ERROR_UNKNOWN", "error (qtier libcuda shim)"};
}

bool valid_device(int device) { return device >= 0 && device < kDeviceCount; }

CUresult allocate(unsigned long long* dptr, size_t bytes) {
    if (dptr == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const size_t size = bytes == 0 ? 1 : bytes;
    void* p = qtier_emu_alloc(size);
    if (p == nullptr) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::lock_guard<std::mutex> lock(state_mutex);
    allocations[reinterpret_cast<uintptr_t>(p)] = size;
    *dptr = reinterpret_cast<uintptr_t>(p);
    return CUDA_SUCCESS;
}

CUresult release(unsigned long long dptr) {
    std::lock_guard<std::mutex> lock(state_mutex);
    const auto found = allocations.find(dptr);
    if (found == allocations.end()) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    qtier_emu_free(reinterpret_cast<void*>(static_cast<uintptr_t>(dptr)), found->second);
    allocations.erase(found);
    return CUDA_SUCCESS;
}

// Whether [ptr, ptr + bytes) lies inside one allocation (a copy past a buffer is an error the
// real driver reports too).
bool inside_allocation(unsigned long long ptr, size_t bytes) {
    std::lock_guard<std::mutex> lock(state_mutex);
    auto after = allocations.upper_bound(ptr);
    if (after == allocations.begin()) {
        return false;
    }
    const auto& [start, size] = *std::prev(after);
    return ptr >= start && ptr - start + bytes <= size;
}

}  // namespace

extern "C" {

CUresult cuInit(unsigned) {
    initialized = true;
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
    if (version == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
    if (!initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    *count = kDeviceCount;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(int* device, int ordinal) {
    if (!initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (!valid_device(ordinal)) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, int device) {
    if (!valid_device(device) || name == nullptr || len <= 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::snprintf(name, (size_t)len, "%s", kDevices[device].name);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, int attribute, int device) {
    if (!valid_device(device) || value == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    switch (attribute) {
        case 16:  // MULTIPROCESSOR_COUNT
            *value = kDevices[device].sm_count;
            return CUDA_SUCCESS;
        case 75:  // COMPUTE_CAPABILITY_MAJOR
            *value = kDevices[device].major;
            return CUDA_SUCCESS;
        case 76:  // COMPUTE_CAPABILITY_MINOR
            *value = kDevices[device].minor;
            return CUDA_SUCCESS;
        case 115:  // MEMORY_POOLS_SUPPORTED
        case 41:   // UNIFIED_ADDRESSING
            *value = 1;
            return CUDA_SUCCESS;
        default:
            std::fprintf(stderr, "qtier libcuda shim: cuDeviceGetAttribute(%d) is not emulated\n", attribute);
            return CUDA_ERROR_NOT_SUPPORTED;
    }
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, int device) {
    if (!valid_device(device) || bytes == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *bytes = size_t{16} << 30;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(Context** ctx, int device) {
    if (!valid_device(device) || ctx == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *ctx = &contexts[device];
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(int device) {
    return valid_device(device) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuCtxSetCurrent(Context* ctx) {
    current = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(Context** ctx) {
    if (ctx == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *ctx = current;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }

CUresult cuStreamCreate(Stream** stream, unsigned) {
    if (stream == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *stream = new Stream{};
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(Stream* stream) {
    delete stream;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(Stream*) { return CUDA_SUCCESS; }

CUresult cuMemAlloc_v2(unsigned long long* dptr, size_t bytes) { return allocate(dptr, bytes); }

CUresult cuMemAllocAsync(unsigned long long* dptr, size_t bytes, Stream*) { return allocate(dptr, bytes); }

CUresult cuMemFree_v2(unsigned long long dptr) { return release(dptr); }

CUresult cuMemFreeAsync(unsigned long long dptr, Stream*) { return release(dptr); }

CUresult cuMemsetD8Async(unsigned long long dptr, unsigned char value, size_t count, Stream*) {
    if (!inside_allocation(dptr, count)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::memset(reinterpret_cast<void*>(static_cast<uintptr_t>(dptr)), value, count);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8_v2(unsigned long long dptr, unsigned char value, size_t count) {
    return cuMemsetD8Async(dptr, value, count, nullptr);
}

CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t bytes, Stream*) {
    if (!inside_allocation(dst, bytes)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(dst)), src, bytes);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void* src, size_t bytes) {
    return cuMemcpyHtoDAsync_v2(dst, src, bytes, nullptr);
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t bytes, Stream*) {
    if (!inside_allocation(src, bytes)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::memcpy(dst, reinterpret_cast<const void*>(static_cast<uintptr_t>(src)), bytes);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH_v2(void* dst, unsigned long long src, size_t bytes) {
    return cuMemcpyDtoHAsync_v2(dst, src, bytes, nullptr);
}

CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t bytes, Stream*) {
    if (!inside_allocation(dst, bytes) || !inside_allocation(src, bytes)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    std::memmove(reinterpret_cast<void*>(static_cast<uintptr_t>(dst)),
                 reinterpret_cast<const void*>(static_cast<uintptr_t>(src)), bytes);
    return CUDA_SUCCESS;
}

// The image must be an ELF file (the cubin NVRTC compiled); its bytes are kept to check that a
// function asked for is in it.
CUresult cuModuleLoadData(Module** module, const void* image) {
    if (module == nullptr || image == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const auto* bytes = static_cast<const unsigned char*>(image);
    if (std::memcmp(bytes, "\x7f" "ELF", 4) != 0 || bytes[4] != 2) {
        return CUDA_ERROR_INVALID_IMAGE;
    }
    // ELF64: e_shoff at 0x28, e_shentsize at 0x3a, e_shnum at 0x3c; the file ends with or after
    // its section headers.
    unsigned long long shoff = 0;
    unsigned short shentsize = 0, shnum = 0;
    std::memcpy(&shoff, bytes + 0x28, 8);
    std::memcpy(&shentsize, bytes + 0x3a, 2);
    std::memcpy(&shnum, bytes + 0x3c, 2);
    const size_t size = (size_t)(shoff + (unsigned long long)shentsize * shnum);
    *module = new Module{std::vector<unsigned char>(bytes, bytes + size), {}};
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(Module* module) {
    delete module;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(Function** function, Module* module, const char* name) {
    if (function == nullptr || module == nullptr || name == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const std::string wanted(name);
    const auto& image = module->image;
    // The name as a NUL-terminated string of the image (its string table).
    const std::string terminated = wanted + '\0';
    const bool in_image =
        std::search(image.begin(), image.end(), terminated.begin(), terminated.end()) != image.end();
    if (!in_image || !qtier_emu_has_kernel(name)) {
        return CUDA_ERROR_NOT_FOUND;
    }
    std::lock_guard<std::mutex> lock(state_mutex);
    module->functions.push_back(std::make_unique<Function>(Function{wanted}));
    *function = module->functions.back().get();
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(Function* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared_bytes, Stream*, void** params, void** extra) {
    if (function == nullptr || params == nullptr || extra != nullptr || shared_bytes != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    char error[1024] = {};
    if (qtier_emu_launch_params(function->name.c_str(), grid, block, params, error, sizeof error) != 0) {
        std::fprintf(stderr, "qtier libcuda shim: launch of %s failed: %s\n", function->name.c_str(), error);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char** text) {
    if (text == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *text = describe(error).text;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** text) {
    if (text == nullptr) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *text = describe(error).name;
    return CUDA_SUCCESS;
}

}  // extern "C"
