//! The element types collectives carry, and how they travel: little-endian bytes, added or
//! copied into place on arrival.

/// An element type that travels in collectives: little-endian on the wire, with its reduction.
pub trait Wire: bytemuck::Pod + Send + Sync + 'static {
    /// Bytes per element.
    const SIZE: usize;
    /// Name for messages.
    const NAME: &'static str;
    /// Little-endian bytes of `xs`.
    fn encode(xs: &[Self]) -> Vec<u8>;
    /// Little-endian bytes of `xs`, borrowed where the machine is little-endian.
    fn le_bytes(xs: &[Self]) -> std::borrow::Cow<'_, [u8]>;
    /// Adds (`add`) or copies the elements in `bytes` into `dst`; `bytes.len() == dst.len() * SIZE`.
    fn decode(bytes: &[u8], dst: &mut [Self], add: bool);
}

impl Wire for i64 {
    fn le_bytes(xs: &[Self]) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(xs))
        } else {
            std::borrow::Cow::Owned(Self::encode(xs))
        }
    }
    const SIZE: usize = 8;
    const NAME: &'static str = "i64";
    fn encode(xs: &[Self]) -> Vec<u8> {
        let mut out = vec![0; xs.len() * 8];
        for (o, x) in out.chunks_exact_mut(8).zip(xs) {
            o.copy_from_slice(&x.to_le_bytes());
        }
        out
    }
    fn decode(bytes: &[u8], dst: &mut [Self], add: bool) {
        // Aligned little-endian bytes are the words themselves.
        if cfg!(target_endian = "little")
            && let Ok(words) = bytemuck::try_cast_slice::<u8, i64>(bytes)
        {
            if add {
                dst.iter_mut()
                    .zip(words)
                    .for_each(|(d, w)| *d = d.wrapping_add(*w));
            } else {
                dst.copy_from_slice(words);
            }
            return;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
        if add {
            dst.iter_mut()
                .zip(words)
                .for_each(|(d, w)| *d = d.wrapping_add(w));
        } else {
            dst.iter_mut().zip(words).for_each(|(d, w)| *d = w);
        }
    }
}

impl Wire for f32 {
    fn le_bytes(xs: &[Self]) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(xs))
        } else {
            std::borrow::Cow::Owned(Self::encode(xs))
        }
    }
    const SIZE: usize = 4;
    const NAME: &'static str = "f32";
    fn encode(xs: &[Self]) -> Vec<u8> {
        let mut out = vec![0; xs.len() * 4];
        for (o, x) in out.chunks_exact_mut(4).zip(xs) {
            o.copy_from_slice(&x.to_le_bytes());
        }
        out
    }
    fn decode(bytes: &[u8], dst: &mut [Self], add: bool) {
        if cfg!(target_endian = "little")
            && let Ok(xs) = bytemuck::try_cast_slice::<u8, f32>(bytes)
        {
            if add {
                dst.iter_mut().zip(xs).for_each(|(d, x)| *d += *x);
            } else {
                dst.copy_from_slice(xs);
            }
            return;
        }
        let xs = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
        if add {
            dst.iter_mut().zip(xs).for_each(|(d, x)| *d += x);
        } else {
            dst.iter_mut().zip(xs).for_each(|(d, x)| *d = x);
        }
    }
}
