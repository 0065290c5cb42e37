//! A host buffer as raw bytes in native order, for copies to and from a device and for
//! the TCP communicator's frames. Every storage dtype is plain old data, so any byte
//! pattern read back into a buffer of the same dtype and length is a valid value.

use crate::tensor::CpuStorage;

pub(crate) fn host_bytes(s: &CpuStorage) -> &[u8] {
    match s {
        CpuStorage::F32(v) => bytemuck::cast_slice(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice(v),
        CpuStorage::F16(v) => bytemuck::cast_slice(v),
        CpuStorage::U32(v) => bytemuck::cast_slice(v),
        CpuStorage::I64(v) => bytemuck::cast_slice(v),
        CpuStorage::Bytes { bytes, .. } => bytes,
    }
}

pub(crate) fn host_bytes_mut(s: &mut CpuStorage) -> &mut [u8] {
    match s {
        CpuStorage::F32(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::F16(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::U32(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::I64(v) => bytemuck::cast_slice_mut(v),
        CpuStorage::Bytes { bytes, .. } => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn bytes_round_trip_in_native_order() {
        let src = CpuStorage::U32(vec![1, 0x0102_0304]);
        let bytes = host_bytes(&src).to_vec();
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[4..], &0x0102_0304u32.to_ne_bytes());
        let mut dst = CpuStorage::zeros(DType::U32, 2);
        host_bytes_mut(&mut dst).copy_from_slice(&bytes);
        assert!(matches!(dst, CpuStorage::U32(ref v) if v == &[1, 0x0102_0304]));
        assert_eq!(
            host_bytes(&CpuStorage::BF16(vec![half::bf16::ONE; 3])).len(),
            6
        );
        assert_eq!(
            host_bytes(&CpuStorage::I64(vec![-1])),
            &(-1i64).to_ne_bytes()
        );
    }
}
