//! Safetensors element types and conversions between the float ones and `f32`.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// An element type as the safetensors format names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits.
    F8E5M2,
    /// 8-bit float, 4 exponent bits.
    F8E4M3,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, for parsing.
    const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Parses the name used in safetensors headers (`"F16"`, `"I8"`, ...).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The float type qtier quantizes from, if this is one of them.
    pub fn as_weight_dtype(self) -> Option<WeightDtype> {
        match self {
            Dtype::F32 => Some(WeightDtype::F32),
            Dtype::F16 => Some(WeightDtype::F16),
            Dtype::BF16 => Some(WeightDtype::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The float dtypes a quantizable weight may have; its scales are stored in the same dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl WeightDtype {
    /// The matching safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::BF16 => Dtype::BF16,
        }
    }

    /// Decodes little-endian elements of this dtype into `out` (`bytes.len()` must be
    /// `out.len() * size`).
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            WeightDtype::F32 => {
                for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
            WeightDtype::F16 => {
                // Copy through a u16 buffer in chunks so that half's F16C path does the conversion.
                let mut halves = [f16::ZERO; DECODE_CHUNK];
                for (out_chunk, byte_chunk) in out.chunks_mut(DECODE_CHUNK).zip(bytes.chunks(DECODE_CHUNK * 2)) {
                    let halves = &mut halves[..out_chunk.len()];
                    for (half, pair) in halves.iter_mut().zip(byte_chunk.chunks_exact(2)) {
                        *half = f16::from_bits(u16::from_le_bytes([pair[0], pair[1]]));
                    }
                    halves.convert_to_f32_slice(out_chunk);
                }
            }
            WeightDtype::BF16 => {
                for (value, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *value = f32::from_bits(u32::from(u16::from_le_bytes([pair[0], pair[1]])) << 16);
                }
            }
        }
    }

    /// Rounds an `f32` to this dtype (round to nearest even) and back, so the caller can work
    /// with the value exactly as it will be stored.
    pub fn round_trip(self, value: f32) -> f32 {
        match self {
            WeightDtype::F32 => value,
            WeightDtype::F16 => f16::from_f32(value).to_f32(),
            WeightDtype::BF16 => bf16::from_f32(value).to_f32(),
        }
    }

    /// The smallest positive value of this dtype (its smallest subnormal).
    pub fn smallest_positive(self) -> f32 {
        match self {
            WeightDtype::F32 => f32::from_bits(1),
            WeightDtype::F16 => f16::from_bits(1).to_f32(),
            WeightDtype::BF16 => bf16::from_bits(1).to_f32(),
        }
    }

    /// Appends `value` (already representable in this dtype) to `out` in little-endian bytes.
    pub fn encode(self, value: f32, out: &mut Vec<u8>) {
        match self {
            WeightDtype::F32 => out.extend_from_slice(&value.to_le_bytes()),
            WeightDtype::F16 => out.extend_from_slice(&f16::from_f32(value).to_le_bytes()),
            WeightDtype::BF16 => out.extend_from_slice(&bf16::from_f32(value).to_le_bytes()),
        }
    }

    /// True when the raw little-endian element is NaN or an infinity (exponent bits all ones).
    pub fn is_nonfinite_bits(self, element: &[u8]) -> bool {
        match self {
            WeightDtype::F32 => {
                let bits = u32::from_le_bytes([element[0], element[1], element[2], element[3]]);
                bits & 0x7f80_0000 == 0x7f80_0000
            }
            WeightDtype::F16 => u16::from_le_bytes([element[0], element[1]]) & 0x7c00 == 0x7c00,
            WeightDtype::BF16 => u16::from_le_bytes([element[0], element[1]]) & 0x7f80 == 0x7f80,
        }
    }
}

/// Elements decoded per call into half's slice conversion: large enough to amortize the call,
/// small enough to stay on the stack.
const DECODE_CHUNK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_name_round_trips() {
        for dtype in Dtype::ALL {
            assert_eq!(Dtype::from_name(dtype.name()), Some(dtype));
        }
        assert_eq!(Dtype::from_name("F17"), None);
    }

    #[test]
    fn decode_matches_half_for_each_weight_dtype() {
        let values = [0.0f32, -1.5, 3.140625, 65504.0, -0.000061035156, 1e-7];
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16] {
            let mut bytes = Vec::new();
            let expected: Vec<f32> = values.iter().map(|v| dtype.round_trip(*v)).collect();
            for value in &expected {
                dtype.encode(*value, &mut bytes);
            }
            let mut decoded = vec![0.0; values.len()];
            dtype.decode_into(&bytes, &mut decoded);
            assert_eq!(decoded, expected, "{dtype:?}");
        }
    }

    #[test]
    fn nonfinite_bits_are_detected_for_each_dtype() {
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16] {
            for (value, nonfinite) in [(1.0f32, false), (f32::NAN, true), (f32::INFINITY, true), (-f32::INFINITY, true)]
            {
                let mut bytes = Vec::new();
                dtype.encode(value, &mut bytes);
                assert_eq!(dtype.is_nonfinite_bits(&bytes), nonfinite, "{dtype:?} {value}");
            }
        }
    }
}
