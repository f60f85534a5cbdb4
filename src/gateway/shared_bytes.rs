//! Large `bytes` objects handed to the I/O thread without a copy.
//!
//! A response chunk of a megabyte would otherwise be copied once more on its way out. Instead
//! the I/O thread reads the `bytes` object's own buffer, which Python never mutates. Releasing
//! the object needs the GIL, which the I/O thread never takes: when it is done with one, it
//! parks the reference here, and a Python thread releases them all at its next request (WSGI)
//! or the event loop at its next wake or pass (ASGI).

use std::sync::Mutex;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Below this size a copy is cheaper than the bookkeeping.
pub(crate) const ZERO_COPY_MIN: usize = 16 * 1024;

static RELEASED: Mutex<Vec<Py<PyBytes>>> = Mutex::new(Vec::new());

struct SharedBytes {
    object: Option<Py<PyBytes>>,
    ptr: *const u8,
    len: usize,
}

// Safety: the pointer is into the buffer of an immutable `bytes` object that `object` keeps
// alive until this value is dropped.
unsafe impl Send for SharedBytes {}
unsafe impl Sync for SharedBytes {}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            RELEASED.lock().unwrap().push(object);
        }
    }
}

/// The contents of `bytes`, shared when large, copied when small.
pub(crate) fn share(bytes: &Bound<'_, PyBytes>) -> Bytes {
    let data = bytes.as_bytes();
    if data.len() < ZERO_COPY_MIN {
        return Bytes::copy_from_slice(data);
    }
    Bytes::from_owner(SharedBytes { ptr: data.as_ptr(), len: data.len(), object: Some(bytes.clone().unbind()) })
}

/// Drops the references the I/O thread has finished with (a Python thread, holding the GIL).
pub(crate) fn release_finished(_py: Python<'_>) {
    let finished = {
        let mut released = RELEASED.lock().unwrap();
        if released.is_empty() {
            return;
        }
        std::mem::take(&mut *released)
    };
    drop(finished);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bytes_are_shared_and_released_with_the_gil() {
        Python::initialize();
        Python::attach(|py| {
            let payload = vec![7u8; ZERO_COPY_MIN * 2];
            let object = PyBytes::new(py, &payload);
            let before = unsafe { pyo3::ffi::Py_REFCNT(object.as_ptr()) };
            let shared = share(&object);
            assert_eq!(shared.as_ptr(), object.as_bytes().as_ptr(), "no copy for large bytes");
            assert_eq!(&shared[..], &payload[..]);
            assert_eq!(unsafe { pyo3::ffi::Py_REFCNT(object.as_ptr()) }, before + 1);
            let other_thread = std::thread::spawn(move || drop(shared));
            other_thread.join().unwrap();
            assert_eq!(unsafe { pyo3::ffi::Py_REFCNT(object.as_ptr()) }, before + 1, "released only under the GIL");
            release_finished(py);
            assert_eq!(unsafe { pyo3::ffi::Py_REFCNT(object.as_ptr()) }, before);

            let small = PyBytes::new(py, b"tiny");
            assert_ne!(share(&small).as_ptr(), small.as_bytes().as_ptr(), "small bytes are copied");
        });
    }
}
