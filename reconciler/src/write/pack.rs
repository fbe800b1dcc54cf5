//! The pack that carries a chain of API commits to a local remote, and its index.
//!
//! A git pack is what `git push` sends and what the remote keeps; its `.idx` (sorted object
//! ids, CRC32s, offsets) is what readers look objects up in. Both are made here rather than by
//! libgit2 (its pack builder, or its indexer behind [`git2::Odb::packwriter`]) for two reasons:
//! - the writer already knows the one cheap delta that matters: each commit's `workspaces/`
//!   tree (10,000 entries, 400 KB) differs from the previous one by one entry, so it is stored
//!   as a `REF_DELTA` of copy-prefix, insert the changed bytes, copy-suffix (a few dozen bytes)
//!   — where the builder's delta search spends milliseconds per tree looking for it;
//! - the writer already knows every object's id: it computed each from the object's exact
//!   content (libgit2 for blobs, small trees and commits; [`super::tree::FlatTree::id_of`] for
//!   `workspaces/` trees). libgit2's indexer would rebuild every tree from its delta and hash
//!   its 400 KB again with collision-detecting SHA-1, most of the cost of a write (figures in
//!   the `api_commits` benchmark's docs).
//!
//! **Guarantees of [`index`]** — nothing is indexed that the pack does not hold: the pack is
//! parsed from its bytes as a reader parses it (header, per-object header, zlib streams inflated
//! to their declared size and checked by their Adler-32, delta instructions bounds-checked, the
//! trailing SHA-1 recomputed), every object is rebuilt (deltas applied to their base, which
//! must come earlier in the same pack: packs on disk are never thin) and compared byte for byte
//! with the content its id was computed from, and with its declared type. The CRC32s of the
//! index are computed from the bytes of the pack. So the ids in the index are ids of exactly
//! what the pack stores; a defect in [`build`] (or in memory between the two) is refused, not
//! published — the tests flip each byte of a pack's headers, deltas and small objects (and a
//! sample of the large whole one) to check it. What is not re-done is hashing a content whose
//! hash was just computed: an id is as good as the code that computed it, which the tests
//! check against libgit2 and `git index-pack` (same ids, byte-identical index).
//!
//! Formats (git's `Documentation/gitformat-pack.txt`): header `PACK`, version 2, object count;
//! per object a type-and-size header, then (deltas) the base id, then zlib data; a SHA-1 of
//! everything before it as trailer. Deltas: base size, result size (7-bit varints), then copy
//! (`0x80 | flags`, offset and size bytes) and insert (`1..=127`, literal bytes) instructions.
//! Index version 2: `\377tOc`, version 2, a 256-entry fan-out table, the sorted ids, their
//! CRC32s, 31-bit offsets (larger ones in a 64-bit table), the pack's SHA-1, its own SHA-1.

use std::collections::HashMap;
use std::io::Write as _;

use git2::{ObjectType, Oid};
use sha1::{Digest, Sha1};

/// One object of a pack.
pub struct Object<'a> {
    /// Its id: the hash of `kind` and `data`, computed by whoever made the object.
    pub id: Oid,
    /// Commit, tree or blob.
    pub kind: ObjectType,
    /// Its content (what `id` was computed from).
    pub data: &'a [u8],
    /// Stored as this delta (see [`delta`]) of this base, which comes earlier in the pack;
    /// `None`: stored whole.
    pub delta: Option<(Oid, &'a [u8])>,
}

/// Whole objects at least this large are stored without compression (zlib "stored" blocks):
/// the one whole `workspaces/` tree of each pack is mostly SHA-1 ids, which compress poorly,
/// and zlib's fastest level costs far more than the copy a stored block is (figures in the
/// `api_commits` benchmark's docs).
const STORE_FROM: usize = 64 * 1024;

/// Why a pack was refused by [`index`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pack to publish is corrupt at byte {offset}: {reason}")]
pub struct Corrupt {
    /// Where in the pack the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

fn corrupt(offset: usize, reason: impl Into<String>) -> Corrupt {
    Corrupt {
        offset,
        reason: reason.into(),
    }
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
    if data.len() >= STORE_FROM {
        return zlib_stored(out, data);
    }
    let mut z = flate2::write::ZlibEncoder::new(out, flate2::Compression::fast());
    z.write_all(data).expect("writing to memory cannot fail");
    z.finish().expect("writing to memory cannot fail");
}

/// A zlib stream of stored (uncompressed) deflate blocks (RFC 1950/1951). Written here because
/// miniz_oxide's level 0 still runs its compressor over the input, where this is a copy and an
/// Adler-32; [`index`] inflates it back with flate2 like any other stream.
fn zlib_stored(out: &mut Vec<u8>, data: &[u8]) {
    // CMF: deflate, 32 KiB window; FLG: no dictionary, check bits making 0x7801 % 31 == 0.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut blocks = data.chunks(usize::from(u16::MAX)).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let len = u16::try_from(block.len()).expect("blocks are at most 65,535 bytes");
        out.push(u8::from(blocks.peek().is_none())); // BFINAL on the last; BTYPE 00
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&simd_adler32::adler32(&data).to_be_bytes());
}

/// The pack holding `objects`, in order.
pub fn build(objects: &[Object<'_>]) -> Vec<u8> {
    let room: usize = objects
        .iter()
        .map(|o| o.delta.map_or(o.data.len(), |(_, d)| d.len() + 20) + 16)
        .sum();
    let mut out = Vec::with_capacity(12 + room + 20);
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(objects.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for object in objects {
        match object.delta {
            None => {
                header(&mut out, type_code(object.kind), object.data.len());
                deflate(&mut out, object.data);
            }
            Some((base, delta)) => {
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

/// Reads a pack as a reader does, checks it against `objects` (what it was built from, in the
/// same order) and returns its `.idx` (version 2). See the module docs for what is checked;
/// any difference is refused.
pub fn index(pack: &[u8], objects: &[Object<'_>]) -> Result<Vec<u8>, Corrupt> {
    const TRAILER: usize = 20;
    if pack.len() < 12 + TRAILER {
        return Err(corrupt(0, "shorter than a header and a trailer"));
    }
    let end = pack.len() - TRAILER;
    if Sha1::digest(&pack[..end]).as_slice() != &pack[end..] {
        return Err(corrupt(end, "the trailing checksum does not match"));
    }
    if &pack[..4] != b"PACK" || pack[4..8] != 2u32.to_be_bytes() {
        return Err(corrupt(0, "not a version 2 pack"));
    }
    let count = u32::from_be_bytes(pack[8..12].try_into().expect("4 bytes"));
    if usize::try_from(count).ok() != Some(objects.len()) {
        return Err(corrupt(
            8,
            format!("{count} objects, {} expected", objects.len()),
        ));
    }
    // id → type code and content of the objects read so far (the bases deltas may use).
    let mut seen: HashMap<Oid, (u8, &[u8])> = HashMap::with_capacity(objects.len());
    let mut entries: Vec<(Oid, u32, u64)> = Vec::with_capacity(objects.len());
    let mut at = 12;
    for object in objects {
        let start = at;
        let (code, size) = read_header(pack, &mut at, end)?;
        let kind = match code {
            1..=4 => {
                let content = inflate(pack, &mut at, end, size)?;
                if content != object.data {
                    return Err(corrupt(
                        start,
                        format!("{} is not what the pack holds", object.id),
                    ));
                }
                code
            }
            7 => {
                let base_id = pack
                    .get(at..at + 20)
                    .filter(|_| at + 20 <= end)
                    .and_then(|b| Oid::from_bytes(b).ok())
                    .ok_or_else(|| corrupt(at, "truncated delta base id"))?;
                let (base_kind, base) = *seen.get(&base_id).ok_or_else(|| {
                    corrupt(
                        at,
                        format!("delta base {base_id} is not earlier in the pack"),
                    )
                })?;
                at += 20;
                let delta = inflate(pack, &mut at, end, size)?;
                check_delta(base, &delta, object.data)
                    .map_err(|reason| corrupt(start, format!("{}: {reason}", object.id)))?;
                base_kind // a delta rebuilds an object of its base's type
            }
            other => {
                return Err(corrupt(
                    start,
                    format!("object type {other} is not written here"),
                ))
            }
        };
        if kind != type_code(object.kind) || object.kind == ObjectType::Any {
            return Err(corrupt(start, format!("{} has the wrong type", object.id)));
        }
        if seen.insert(object.id, (kind, object.data)).is_some() {
            return Err(corrupt(
                start,
                format!("{} is in the pack twice", object.id),
            ));
        }
        let crc = crc32fast::hash(&pack[start..at]);
        entries.push((object.id, crc, start as u64));
    }
    if at != end {
        return Err(corrupt(at, "bytes after the last object"));
    }
    Ok(write_index(entries, &pack[end..]))
}

/// Reads an object header (type code, size) at `*at`.
fn read_header(pack: &[u8], at: &mut usize, end: usize) -> Result<(u8, usize), Corrupt> {
    let start = *at;
    let mut next = || {
        let byte = *pack[..end]
            .get(*at)
            .ok_or_else(|| corrupt(start, "truncated object header"))?;
        *at += 1;
        Ok::<u8, Corrupt>(byte)
    };
    let first = next()?;
    let code = (first >> 4) & 0x07;
    let mut size = usize::from(first & 0x0f);
    let mut shift = 4;
    let mut byte = first;
    while byte & 0x80 != 0 {
        byte = next()?;
        if shift > 56 {
            return Err(corrupt(start, "object size overflows"));
        }
        size |= usize::from(byte & 0x7f) << shift;
        shift += 7;
    }
    Ok((code, size))
}

/// Inflates the zlib stream at `*at`, which must end within the pack and give exactly `size`
/// bytes (its Adler-32 is checked by the inflater); moves `*at` past it.
fn inflate(pack: &[u8], at: &mut usize, end: usize, size: usize) -> Result<Vec<u8>, Corrupt> {
    let start = *at;
    let mut z = flate2::Decompress::new(true);
    // One byte of room more than declared: a longer stream is seen, not cut.
    let mut out = Vec::with_capacity(size + 1);
    let status = z
        .decompress_vec(&pack[start..end], &mut out, flate2::FlushDecompress::Finish)
        .map_err(|e| corrupt(start, format!("zlib: {e}")))?;
    if status != flate2::Status::StreamEnd || out.len() != size {
        return Err(corrupt(
            start,
            format!("zlib data does not hold the {size} bytes declared"),
        ));
    }
    *at += usize::try_from(z.total_in()).expect("at most the pack's length");
    Ok(out)
}

/// Checks that `delta` turns `base` into exactly `target`, comparing as it goes (nothing is
/// rebuilt: a copy instruction compares a range of the base with the target's next bytes).
fn check_delta(base: &[u8], delta: &[u8], target: &[u8]) -> Result<(), String> {
    let mut i = 0;
    let mut varint = || -> Result<usize, String> {
        let (mut n, mut shift) = (0usize, 0);
        loop {
            let b = *delta.get(i).ok_or("truncated delta header")?;
            i += 1;
            if shift > 56 {
                return Err("delta size overflows".into());
            }
            n |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
    };
    if varint()? != base.len() {
        return Err("delta made for a base of another size".into());
    }
    if varint()? != target.len() {
        return Err("delta rebuilds an object of another size".into());
    }
    let mut made = 0;
    while i < delta.len() {
        let op = delta[i];
        i += 1;
        let (from, len): (&[u8], usize) = if op & 0x80 != 0 {
            let (mut offset, mut len) = (0usize, 0usize);
            for k in 0..7 {
                if op & (1 << k) != 0 {
                    let b = usize::from(*delta.get(i).ok_or("truncated copy instruction")?);
                    i += 1;
                    if k < 4 {
                        offset |= b << (8 * k);
                    } else {
                        len |= b << (8 * (k - 4));
                    }
                }
            }
            if len == 0 {
                len = 0x10000;
            }
            let range = base
                .get(offset..offset.saturating_add(len))
                .ok_or("copy outside the base")?;
            (range, len)
        } else if op != 0 {
            let len = usize::from(op);
            let range = delta.get(i..i + len).ok_or("truncated insert")?;
            i += len;
            (range, len)
        } else {
            return Err("reserved delta instruction 0".into());
        };
        if target.get(made..made + len) != Some(from) {
            return Err("delta does not rebuild the object".into());
        }
        made += len;
    }
    if made != target.len() {
        return Err("delta rebuilds too little".into());
    }
    Ok(())
}

/// The `.idx` (version 2) of a pack with these objects (id, CRC32, offset) and checksum.
fn write_index(mut entries: Vec<(Oid, u32, u64)>, pack_checksum: &[u8]) -> Vec<u8> {
    entries.sort_unstable_by_key(|e| e.0);
    let mut out = Vec::with_capacity(8 + 1024 + entries.len() * 28 + 40);
    out.extend_from_slice(&[0xff, b't', b'O', b'c']);
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in &entries {
        fanout[usize::from(id.as_bytes()[0])] += 1;
    }
    let mut total = 0u32;
    for n in fanout {
        total += n;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for (id, _, _) in &entries {
        out.extend_from_slice(id.as_bytes());
    }
    for (_, crc, _) in &entries {
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, _, offset) in &entries {
        let small = match u32::try_from(*offset) {
            Ok(o) if o < 0x8000_0000 => o,
            _ => {
                let i = u32::try_from(large.len()).expect("fewer than 2^31 large offsets");
                large.push(*offset);
                0x8000_0000 | i
            }
        };
        out.extend_from_slice(&small.to_be_bytes());
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack_checksum);
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

/// The delta of a splice (see [`super::tree::Splice`]): copy the `offset` bytes before it,
/// insert `inserted`, copy what follows the `removed` bytes — what [`delta`] finds by
/// scanning, known here without a scan.
pub fn splice_delta(base_len: usize, offset: usize, removed: usize, inserted: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inserted.len() + 32);
    varint(&mut out, base_len);
    varint(&mut out, base_len - removed + inserted.len());
    copy(&mut out, 0, offset);
    insert(&mut out, inserted);
    copy(&mut out, offset + removed, base_len - offset - removed);
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
        // Splice deltas, checked by the same reading as a pack's: replace, insert, remove, at
        // the start, the middle and the end.
        for (offset, removed, inserted) in [
            (150_000, 40, vec![1u8; 40]),
            (0, 0, vec![2u8; 300]),
            (299_960, 40, Vec::new()),
            (300_000, 0, vec![3u8; 7]),
            (70_000, 0x10000 + 5, vec![4u8; 2]),
        ] {
            let mut target = base[..offset].to_vec();
            target.extend_from_slice(&inserted);
            target.extend_from_slice(&base[offset + removed..]);
            let d = splice_delta(base.len(), offset, removed, &inserted);
            assert_eq!(apply(&base, &d), target);
            assert_eq!(check_delta(&base, &d, &target), Ok(()));
            assert!(check_delta(&base, &d, &base).is_err());
        }
    }

    /// A pack like the writer's: a whole `workspaces/`-sized tree, deltas of it, blobs and a
    /// commit; with the contents its ids were computed from.
    struct Sample {
        trees: Vec<Vec<u8>>,
        deltas: Vec<Vec<u8>>,
        ids: Vec<Oid>,
    }

    impl Sample {
        fn new() -> Self {
            // Just over STORE_FROM: stored whole in two blocks.
            let v0: Vec<u8> = (0..17_500u32).flat_map(|i| i.to_le_bytes()).collect();
            let mut v1 = v0.clone();
            v1[1000] = 9;
            let mut v2 = v1.clone();
            v2.extend_from_slice(b"tail");
            let trees = vec![v0, v1, v2];
            let deltas = vec![delta(&trees[0], &trees[1]), delta(&trees[1], &trees[2])];
            let mut ids: Vec<Oid> = trees
                .iter()
                .map(|t| Oid::hash_object(ObjectType::Blob, t).expect("hash"))
                .collect();
            ids.push(Oid::hash_object(ObjectType::Blob, b"small").expect("hash"));
            ids.push(Oid::hash_object(ObjectType::Blob, b"").expect("hash"));
            Self { trees, deltas, ids }
        }

        fn objects(&self) -> Vec<Object<'_>> {
            let blob = |id, data| Object {
                id,
                kind: ObjectType::Blob,
                data,
                delta: None,
            };
            vec![
                blob(self.ids[0], &self.trees[0]),
                Object {
                    delta: Some((self.ids[0], &self.deltas[0])),
                    ..blob(self.ids[1], &self.trees[1])
                },
                Object {
                    delta: Some((self.ids[1], &self.deltas[1])),
                    ..blob(self.ids[2], &self.trees[2])
                },
                blob(self.ids[3], b"small"),
                blob(self.ids[4], b""),
            ]
        }
    }

    fn git(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs")
    }

    #[test]
    fn the_index_is_the_one_git_makes_and_both_read_the_objects_back() {
        let sample = Sample::new();
        let objects = sample.objects();
        let pack = build(&objects);
        let idx = index(&pack, &objects).expect("a sound pack is indexed");
        // git indexes the same pack (hashing every object) into the very same bytes.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.pack"), &pack).expect("write");
        let out = git(dir.path(), &["index-pack", "-o", "p.idx", "p.pack"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(dir.path().join("p.idx")).expect("idx"), idx);
        // Installed in a repository, git checks it whole.
        assert!(git(dir.path(), &["init", "-q", "--bare", "repo"])
            .status
            .success());
        let repo_dir = dir.path().join("repo");
        let packs = repo_dir.join("objects/pack");
        let hex = hex::encode(&pack[pack.len() - 20..]);
        std::fs::write(packs.join(format!("pack-{hex}.pack")), &pack).expect("write");
        std::fs::write(packs.join(format!("pack-{hex}.idx")), &idx).expect("write");
        let idx_path = format!("objects/pack/pack-{hex}.idx");
        let verify = git(&repo_dir, &["verify-pack", "-v", &idx_path]);
        assert!(verify.status.success(), "{verify:?}");
        let fsck = git(&repo_dir, &["fsck", "--strict", "--no-dangling"]);
        assert!(fsck.status.success(), "{fsck:?}");
        // libgit2 reads every object back from the pack and our index.
        let repo = git2::Repository::open_bare(&repo_dir).expect("repo");
        let odb = repo.odb().expect("odb");
        for o in &objects {
            let read = odb.read(o.id).expect("object in the pack");
            assert_eq!(read.data(), o.data);
        }
    }

    #[test]
    fn every_corrupted_byte_is_refused_or_harmless() {
        let sample = Sample::new();
        let objects = sample.objects();
        let pack = build(&objects);
        let good = index(&pack, &objects).expect("sound");
        // A wrong trailer is refused.
        let mut bad = pack.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(index(&bad, &objects).is_err());
        // Every byte before it, flipped with the trailer made to match again (as a builder bug
        // would): refused, unless the pack still holds exactly the same objects (a flip in the
        // padding bits of a deflate stream) — which git itself then confirms by hashing.
        let body = pack.len() - 20;
        // Every byte outside the first tree's stored data, every 53rd inside it, and all of its
        // stored-block headers (the first at byte 17: after the pack header, three bytes of
        // object header and two of zlib header; one every 65,540 bytes).
        let stored = 22..22 + sample.trees[0].len() + 5;
        let block = |at: usize| at >= 17 && (at - 17) % 65_540 < 5;
        let flips: Vec<usize> = (0..body)
            .filter(|at| !stored.contains(at) || at % 53 == 0 || block(*at))
            .collect();
        assert!(flips.len() > 1000);
        let mut harmless = 0;
        for &at in &flips {
            let mut bad = pack[..body].to_vec();
            bad[at] ^= 0x10;
            let sum = Sha1::digest(&bad);
            bad.extend_from_slice(&sum);
            if let Ok(idx) = index(&bad, &objects) {
                harmless += 1;
                assert_ne!(idx, good, "byte {at}: the index names its pack");
                let dir = tempfile::tempdir().expect("tempdir");
                std::fs::write(dir.path().join("p.pack"), &bad).expect("write");
                let out = git(dir.path(), &["index-pack", "-o", "p.idx", "p.pack"]);
                assert!(
                    out.status.success(),
                    "byte {at}: accepted but git refuses it"
                );
                assert_eq!(std::fs::read(dir.path().join("p.idx")).expect("idx"), idx);
            }
        }
        assert!(
            harmless * 100 < flips.len(),
            "{harmless} of {} flips were let through",
            flips.len()
        );
        // A content other than the one the pack holds, under the same id, is refused.
        let mut other = sample.trees[2].clone();
        other[5] ^= 1;
        let mut lying = sample.objects();
        lying[2].data = &other;
        assert!(index(&pack, &lying).is_err());
        // So is a type other than the one stored, and a delta whose base is not in the pack.
        let mut typed = sample.objects();
        typed[1].kind = ObjectType::Tree;
        assert!(index(&pack, &typed).is_err());
        let thin = &sample.objects()[1..];
        assert!(index(&build(thin), thin).is_err());
    }
}
