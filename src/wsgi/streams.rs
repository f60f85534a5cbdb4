//! `wsgi.errors` and `wsgi.file_wrapper`.

use std::io::Write;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `wsgi.errors`: text the app writes here goes to the server's error stream (stderr).
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct ErrorStream;

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &str) -> usize {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        text.chars().count()
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        let stderr = std::io::stderr();
        let mut out = stderr.lock();
        for line in lines.try_iter()? {
            let line = line?;
            let _ = out.write_all(line.extract::<&str>()?.as_bytes());
        }
        Ok(())
    }

    fn flush(&self) {
        let _ = std::io::stderr().lock().flush();
    }
}

/// `wsgi.file_wrapper`. When the wrapped object is a real file, the server reads it itself,
/// off the Python thread and without loading it whole; anything else is iterated in blocks.
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct FileWrapper {
    #[pyo3(get)]
    pub filelike: Py<PyAny>,
    #[pyo3(get)]
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper { filelike, blksize: blksize.max(1) }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self.filelike.bind(py).call_method1("read", (self.blksize,))?;
        let empty = match block.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes().is_empty(),
            Err(_) => block.len()? == 0,
        };
        Ok((!empty).then_some(block))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr("close")? {
            filelike.call_method0("close")?;
        }
        Ok(())
    }
}
