//! A little-endian reader that knows the file length, so every read is checked against the bytes
//! that really remain before anything is read or allocated.

use std::io::{Read, Seek, SeekFrom};

use super::error::GgufError;

/// Skips longer than this seek instead of reading through; shorter ones read through a buffer,
/// because a seek on a `BufReader` throws its buffer away (costly for thousands of tiny strings).
const SEEK_INSTEAD_OF_READ_THRESHOLD: u64 = 64 * 1024;

/// Wraps a `Read + Seek` source with its known length and our own position counter.
///
/// `section` arguments are closures so the description of what is being read (which often
/// includes a key or tensor name) is only formatted when an error is actually reported.
pub(crate) struct BoundedReader<R> {
    inner: R,
    position: u64,
    file_length: u64,
}

impl<R: Read + Seek> BoundedReader<R> {
    /// Starts reading at byte 0 of `inner`, which is `file_length` bytes long.
    pub(crate) fn new(mut inner: R, file_length: u64) -> Result<Self, GgufError> {
        inner.seek(SeekFrom::Start(0)).map_err(|source| GgufError::Io { offset: 0, source })?;
        Ok(Self { inner, position: 0, file_length })
    }

    /// Offset of the next byte to be read.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    pub(crate) fn file_length(&self) -> u64 {
        self.file_length
    }

    /// Bytes between the current position and the end of the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.file_length.saturating_sub(self.position)
    }

    fn truncated(&self, needed: u64, section: impl FnOnce() -> String) -> GgufError {
        GgufError::Truncated { section: section(), offset: self.position, needed, file_length: self.file_length }
    }

    fn io_error(&self, source: std::io::Error, section: impl FnOnce() -> String, needed: u64) -> GgufError {
        // The length was measured up front; if the file is shorter now (it shrank while we read),
        // that is still a truncation, and reporting it as one names the section.
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            self.truncated(needed, section)
        } else {
            GgufError::Io { offset: self.position, source }
        }
    }

    /// Reads exactly `N` bytes.
    pub(crate) fn read_array<const N: usize>(
        &mut self,
        section: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let needed = N as u64;
        if needed > self.remaining() {
            return Err(self.truncated(needed, section));
        }
        let mut buffer = [0u8; N];
        if let Err(source) = self.inner.read_exact(&mut buffer) {
            return Err(self.io_error(source, section, needed));
        }
        self.position += needed;
        Ok(buffer)
    }

    pub(crate) fn read_u8(&mut self, section: impl FnOnce() -> String) -> Result<u8, GgufError> {
        let [byte] = self.read_array::<1>(section)?;
        Ok(byte)
    }

    pub(crate) fn read_u32(&mut self, section: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.read_array(section)?))
    }

    pub(crate) fn read_u64(&mut self, section: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.read_array(section)?))
    }

    /// Reads `length` bytes into a new vector. The caller must already have bounded `length` by a
    /// sane limit; it is checked against the remaining bytes here again before allocating, so the
    /// allocation is always backed by bytes that exist in the file.
    pub(crate) fn read_vec(&mut self, length: u64, section: impl FnOnce() -> String) -> Result<Vec<u8>, GgufError> {
        if length > self.remaining() {
            return Err(self.truncated(length, section));
        }
        let Ok(length_in_memory) = usize::try_from(length) else {
            return Err(self.io_error(std::io::ErrorKind::OutOfMemory.into(), section, length));
        };
        let mut bytes = vec![0u8; length_in_memory];
        if let Err(source) = self.inner.read_exact(&mut bytes) {
            return Err(self.io_error(source, section, length));
        }
        self.position += length;
        Ok(bytes)
    }

    /// Moves past `length` bytes without keeping them.
    pub(crate) fn skip(&mut self, length: u64, section: impl FnOnce() -> String) -> Result<(), GgufError> {
        if length > self.remaining() {
            return Err(self.truncated(length, section));
        }
        if length >= SEEK_INSTEAD_OF_READ_THRESHOLD {
            // `length` <= remaining <= file length, which an OS file length never lets exceed i64.
            let Ok(signed_length) = i64::try_from(length) else {
                return Err(self.io_error(std::io::ErrorKind::InvalidInput.into(), section, length));
            };
            if let Err(source) = self.inner.seek(SeekFrom::Current(signed_length)) {
                return Err(self.io_error(source, section, length));
            }
        } else {
            let copied = match std::io::copy(&mut (&mut self.inner).take(length), &mut std::io::sink()) {
                Ok(copied) => copied,
                Err(source) => return Err(self.io_error(source, section, length)),
            };
            if copied != length {
                return Err(self.io_error(std::io::ErrorKind::UnexpectedEof.into(), section, length));
            }
        }
        self.position += length;
        Ok(())
    }
}
