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
        // Splice deltas: replace, insert, remove, at the start, the middle and the end. (gix
        // applies them too when it indexes a pack: `super::super::pack`'s tests.)
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
        }
    }
}
