//! The sealer's buckets: records hashed into a fixed number of buckets, kept in memory up to a
//! budget and appended to one temporary file per bucket past it. A bucket is then read back whole,
//! so the sealer holds one bucket's rows at a time, never the epoch's.
//!
//! Records are written by [`Writer`] and read by [`Reader`]: fixed-width little-endian numbers and
//! length-prefixed strings, no framing (the reader knows each record's layout from its tag).

use std::fs::File;
use std::io::{self, Read, Write};

pub(super) struct Buckets {
    bufs: Vec<Vec<u8>>,
    files: Vec<Option<File>>,
    dir: Option<tempfile::TempDir>,
    buffered: usize,
    budget: usize,
    /// Bytes written to files so far.
    pub spilled: u64,
}

impl Buckets {
    /// `n` buckets (at least one) that keep up to `budget` bytes in memory in all.
    pub fn new(n: usize, budget: usize) -> Buckets {
        let n = n.max(1);
        Buckets {
            bufs: vec![Vec::new(); n],
            files: (0..n).map(|_| None).collect(),
            dir: None,
            buffered: 0,
            budget,
            spilled: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// The bucket of a value whose hash is `h`.
    pub fn of(&self, h: u64) -> usize {
        (h % self.bufs.len() as u64) as usize
    }

    /// Appends a record to bucket `i`; past the budget, every bucket's buffer goes to its file.
    pub fn push(&mut self, i: usize, write: impl FnOnce(&mut Writer)) -> io::Result<()> {
        let buf = &mut self.bufs[i];
        let before = buf.len();
        write(&mut Writer(buf));
        self.buffered += buf.len() - before;
        if self.buffered > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.dir.is_none() {
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("hexpulse-seal-")
                    .tempdir()?,
            );
        }
        let dir = self
            .dir
            .as_ref()
            .expect("created above")
            .path()
            .to_path_buf();
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let file = match &mut self.files[i] {
                Some(f) => f,
                slot => slot.insert(File::create_new(dir.join(format!("{i:05}")))?),
            };
            file.write_all(buf)?;
            self.spilled += buf.len() as u64;
            // Freed, not kept: the capacity is the memory the budget bounds.
            *buf = Vec::new();
        }
        self.buffered = 0;
        Ok(())
    }

    /// Bucket `i`'s file, in the folder that the first spill creates.
    fn path(&self, i: usize) -> std::path::PathBuf {
        let dir = self.dir.as_ref().expect("created before any file");
        dir.path().join(format!("{i:05}"))
    }

    /// Bucket `i`'s records, in the order they were pushed; the bucket is empty afterwards.
    pub fn take(&mut self, i: usize) -> io::Result<Vec<u8>> {
        let buf = std::mem::take(&mut self.bufs[i]);
        self.buffered -= buf.len();
        // Writes to a `File` are not buffered: closing it is all there is to do before reading.
        if self.files[i].take().is_none() {
            return Ok(buf);
        }
        let path = self.path(i);
        let mut all = Vec::new();
        File::open(&path)?.read_to_end(&mut all)?;
        std::fs::remove_file(&path)?;
        all.extend_from_slice(&buf);
        Ok(all)
    }
}

/// Writes one record's fields.
pub(super) struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    pub fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }
    pub fn opt_f64(&mut self, v: Option<f64>) {
        self.opt_i64(v.map(|v| v.to_bits() as i64));
    }
}

/// Reads the fields a [`Writer`] wrote, in the same order. The bytes come from this process
/// only, so a short or invalid record is a bug: it panics.
pub(super) struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("N bytes")
    }
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    pub fn f64(&mut self) -> f64 {
        f64::from_bits(self.u64())
    }
    pub fn str(&mut self) -> String {
        let n = u32::from_le_bytes(self.take()) as usize;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(head.to_vec()).expect("written from a str")
    }
    pub fn opt_i64(&mut self) -> Option<i64> {
        (self.u8() == 1).then(|| self.i64())
    }
    pub fn opt_f64(&mut self) -> Option<f64> {
        self.opt_i64().map(|v| f64::from_bits(v as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records come back whole and in order, from memory, from files, and from both.
    #[test]
    fn buckets_return_what_was_pushed_whether_spilled_or_not() {
        for budget in [0, 40, 1 << 20] {
            let mut b = Buckets::new(3, budget);
            for i in 0..100u64 {
                b.push(b.of(i), |w| {
                    w.u64(i);
                    w.str(&format!("r{i}"));
                    w.opt_f64((i % 2 == 0).then_some(i as f64 / 3.0));
                })
                .unwrap();
            }
            assert_eq!(b.spilled > 0, budget < 1 << 20, "budget {budget}");
            let mut seen = Vec::new();
            for bucket in 0..b.len() {
                let bytes = b.take(bucket).unwrap();
                let mut r = Reader(&bytes);
                while !r.is_empty() {
                    let i = r.u64();
                    assert_eq!(r.str(), format!("r{i}"));
                    assert_eq!(r.opt_f64(), (i % 2 == 0).then_some(i as f64 / 3.0));
                    assert_eq!(b.of(i), bucket);
                    seen.push(i);
                }
                assert!(b.take(bucket).unwrap().is_empty());
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..100).collect::<Vec<_>>(), "budget {budget}");
        }
    }
}
