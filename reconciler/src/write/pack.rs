//! The pack that carries a chain of API commits to a local remote.
//!
//! A git pack is what `git push` sends and what the remote indexes (libgit2's indexer behind
//! [`git2::Odb::packwriter`], which checks every object's id and the trailing checksum). Built
//! here rather than by libgit2's pack builder because the writer already knows the one cheap
//! delta that matters: each commit's `workspaces/` tree (10,000 entries, 400 KB) differs from
//! the previous one by one entry, so it is stored as a `REF_DELTA` of copy-prefix, insert the
//! changed bytes, copy-suffix (a few dozen bytes) — where the builder's delta search spends
//! milliseconds per tree looking for it. The first tree's base is the head's tree, already in
//! the remote (a *thin* pack, completed by the indexer as `git index-pack --fix-thin` does).
//!
//! Formats (git's `Documentation/gitformat-pack.txt`): header `PACK`, version 2, object count;
//! per object a type-and-size header, then (deltas) the base id, then zlib data; a SHA-1 of
//! everything before it as trailer. Deltas: base size, result size (7-bit varints), then copy
//! (`0x80 | flags`, offset and size bytes) and insert (`1..=127`, literal bytes) instructions.

use std::io::Write as _;

use git2::{ObjectType, Oid};
use sha1::{Digest, Sha1};

/// One object of a pack.
pub enum Object {
    /// Stored whole.
    Full {
        /// Commit, tree or blob.
        kind: ObjectType,
        /// Its content.
        data: Vec<u8>,
    },
    /// Stored as a delta of `base` (in the pack or in the receiving repository).
    Delta {
        /// The base object's id.
        base: Oid,
        /// The delta (see [`delta`]).
        delta: Vec<u8>,
    },
}

fn type_code(kind: ObjectType) -> u8 {
    match kind {
        ObjectType::Commit => 1,
        ObjectType::Tree => 2,
        ObjectType::Blob => 3,
        ObjectType::Tag => 4,
        ObjectType::Any => 3,
    }
}

fn header(out: &mut Vec<u8>, code: u8, size: usize) {
    let mut byte = (code << 4) | (size & 0x0f) as u8;
    let mut rest = size >> 4;
    while rest != 0 {
        out.push(byte | 0x80);
        byte = (rest & 0x7f) as u8;
        rest >>= 7;
    }
    out.push(byte);
}

fn deflate(out: &mut Vec<u8>, data: &[u8]) {
    let mut z = flate2::write::ZlibEncoder::new(out, flate2::Compression::fast());
    z.write_all(data).expect("writing to memory cannot fail");
    z.finish().expect("writing to memory cannot fail");
}

/// The pack holding `objects`, in order.
pub fn build(objects: &[Object]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(objects.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for object in objects {
        match object {
            Object::Full { kind, data } => {
                header(&mut out, type_code(*kind), data.len());
                deflate(&mut out, data);
            }
            Object::Delta { base, delta } => {
                header(&mut out, 7, delta.len());
                out.extend_from_slice(base.as_bytes());
                deflate(&mut out, delta);
            }
        }
    }
    let checksum = Sha1::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

/// Length of the common prefix, compared a block at a time (memcmp) before byte by byte.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 256;
    let len = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= len && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..len]
        .iter()
        .zip(&b[i..len])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Length of the common suffix, the same way from the end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 256;
    let len = a.len().min(b.len());
    let (ea, eb) = (a.len(), b.len());
    let mut i = 0;
    while i + BLOCK <= len && a[ea - i - BLOCK..ea - i] == b[eb - i - BLOCK..eb - i] {
        i += BLOCK;
    }
    i + a[..ea - i]
        .iter()
        .rev()
        .zip(b[..eb - i].iter().rev())
        .take(len - i)
        .take_while(|(x, y)| x == y)
        .count()
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n != 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn copy(out: &mut Vec<u8>, mut offset: usize, mut size: usize) {
    const MAX: usize = 0xff_ffff;
    while size > 0 {
        let chunk = size.min(MAX);
        let mut op = 0x80u8;
        let mut args = Vec::with_capacity(7);
        for i in 0..4 {
            let b = ((offset >> (8 * i)) & 0xff) as u8;
            if b != 0 {
                op |= 1 << i;
                args.push(b);
            }
        }
        for i in 0..3 {
            let b = ((chunk >> (8 * i)) & 0xff) as u8;
            if b != 0 {
                op |= 0x10 << i;
                args.push(b);
            }
        }
        out.push(op);
        out.extend_from_slice(&args);
        offset += chunk;
        size -= chunk;
    }
}

fn insert(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(127) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// A delta turning `base` into `target`: copy their common prefix, insert what differs, copy
/// their common suffix. Exact for any pair; small when they differ in one place.
pub fn delta(base: &[u8], target: &[u8]) -> Vec<u8> {
    let prefix = common_prefix(base, target);
    let room = base.len().min(target.len()) - prefix;
    let suffix = common_suffix(&base[prefix..], &target[prefix..]).min(room);
    let mut out = Vec::new();
    varint(&mut out, base.len());
    varint(&mut out, target.len());
    copy(&mut out, 0, prefix);
    insert(&mut out, &target[prefix..target.len() - suffix]);
    copy(&mut out, base.len() - suffix, suffix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a delta (git's algorithm), to check [`delta`] independently of libgit2.
    fn apply(base: &[u8], delta: &[u8]) -> Vec<u8> {
        let mut i = 0;
        let mut read_varint = || {
            let (mut n, mut shift) = (0usize, 0);
            loop {
                let b = delta[i];
                i += 1;
                n |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    return n;
                }
            }
        };
        assert_eq!(read_varint(), base.len());
        let size = read_varint();
        let mut out = Vec::new();
        while i < delta.len() {
            let op = delta[i];
            i += 1;
            if op & 0x80 != 0 {
                let (mut offset, mut len) = (0usize, 0usize);
                for k in 0..4 {
                    if op & (1 << k) != 0 {
                        offset |= usize::from(delta[i]) << (8 * k);
                        i += 1;
                    }
                }
                for k in 0..3 {
                    if op & (0x10 << k) != 0 {
                        len |= usize::from(delta[i]) << (8 * k);
                        i += 1;
                    }
                }
                if len == 0 {
                    len = 0x10000;
                }
                out.extend_from_slice(&base[offset..offset + len]);
            } else {
                let n = usize::from(op);
                out.extend_from_slice(&delta[i..i + n]);
                i += n;
            }
        }
        assert_eq!(out.len(), size);
        out
    }

    #[test]
    fn deltas_rebuild_their_target() {
        let base: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut changed = base.clone();
        changed[150_000] ^= 1;
        let mut grown = base.clone();
        grown.splice(70_000..70_000, [7u8; 300]);
        let cases: [(&[u8], &[u8]); 7] = [
            (&base, &changed),
            (&base, &grown),
            (&grown, &base),
            (&base, &base),
            (b"", b"abc"),
            (&base[..0x10000], &base[..0x10000 * 2]),
            (b"abcabc", b"abc"),
        ];
        for (a, b) in cases {
            let d = delta(a, b);
            assert_eq!(apply(a, &d), b);
        }
        assert!(delta(&base, &changed).len() < 32);
    }

    #[test]
    fn a_thin_pack_of_deltas_is_indexed_by_libgit2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init_bare(dir.path()).expect("repo");
        let odb = repo.odb().expect("odb");
        // The base lives in the repository; the pack carries a chain of two deltas of it and a
        // whole blob.
        let v0: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let base = odb.write(ObjectType::Blob, &v0).expect("base");
        let mut v1 = v0.clone();
        v1[1000] = 9;
        let mut v2 = v1.clone();
        v2.extend_from_slice(b"tail");
        let id1 = git2::Oid::hash_object(ObjectType::Blob, &v1).expect("hash");
        let id2 = git2::Oid::hash_object(ObjectType::Blob, &v2).expect("hash");
        let id3 = git2::Oid::hash_object(ObjectType::Blob, b"whole").expect("hash");
        let pack = build(&[
            Object::Delta {
                base,
                delta: delta(&v0, &v1),
            },
            Object::Delta {
                base: id1,
                delta: delta(&v1, &v2),
            },
            Object::Full {
                kind: ObjectType::Blob,
                data: b"whole".to_vec(),
            },
        ]);
        let mut writer = odb.packwriter().expect("packwriter");
        writer.write_all(&pack).expect("write");
        writer.commit().expect("indexed");
        drop(writer);
        let odb = repo.odb().expect("odb");
        assert_eq!(odb.read(id1).expect("v1").data(), v1.as_slice());
        assert_eq!(odb.read(id2).expect("v2").data(), v2.as_slice());
        assert_eq!(odb.read(id3).expect("whole").data(), b"whole");
        // A corrupted pack is refused.
        let mut bad = build(&[Object::Full {
            kind: ObjectType::Blob,
            data: b"x".to_vec(),
        }]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut writer = odb.packwriter().expect("packwriter");
        let refused = writer.write_all(&bad).is_err() || writer.commit().is_err();
        assert!(refused);
    }
}
