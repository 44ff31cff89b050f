//! A flat array on some device: host memory for the cpu and emulated devices, GPU memory for the
//! cuda device.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use crate::cuda;
use crate::launch::KernelArg;
use crate::{Error, Result};

/// The element types a buffer can hold.
pub trait Element:
    bytemuck::Pod + DeviceRepr + ValidAsZeroBits + Default + Send + Sync + std::fmt::Debug + 'static
{
}
impl Element for f32 {}
impl Element for u32 {}
impl Element for u8 {}
impl Element for u64 {}

/// A flat array on some device.
#[derive(Debug)]
pub struct Buffer<T: Element> {
    pub(super) storage: Storage<T>,
}

#[derive(Debug)]
pub(super) enum Storage<T: Element> {
    /// Host memory, for the cpu and emulated devices.
    Host(Vec<T>),
    Cuda(CudaSlice<T>),
}

impl<T: Element> Buffer<T> {
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Host(v) => v.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn host(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Cuda(_) => Err(in_gpu_memory()),
        }
    }

    pub(super) fn host_mut(&mut self) -> Result<&mut [T]> {
        match &mut self.storage {
            Storage::Host(v) => Ok(v),
            Storage::Cuda(_) => Err(in_gpu_memory()),
        }
    }

    /// The address of the first element, on the host or on the GPU.
    pub(super) fn address(&self) -> u64 {
        match &self.storage {
            Storage::Host(v) => v.as_ptr() as u64,
            Storage::Cuda(s) => cuda::device_address(s),
        }
    }

    /// This buffer as a kernel argument the kernel only reads: its first element's address.
    pub fn arg(&self) -> KernelArg {
        KernelArg::Ptr(self.address())
    }

    /// This buffer as a kernel argument the kernel writes.
    pub fn arg_mut(&mut self) -> KernelArg {
        match &mut self.storage {
            Storage::Host(v) => KernelArg::Ptr(v.as_mut_ptr() as u64),
            Storage::Cuda(s) => KernelArg::Ptr(cuda::device_address(s)),
        }
    }
}

pub(super) fn in_host_memory() -> Error {
    Error::Device {
        device: "cuda".to_string(),
        what: "the buffer is in host memory; upload it first".to_string(),
    }
}

fn in_gpu_memory() -> Error {
    Error::Device {
        device: "cpu".to_string(),
        what: "the buffer is in GPU memory; download it first".to_string(),
    }
}
