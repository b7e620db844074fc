//! Little-endian bit streams: bit `i` of the stream is bit `i % 8` of byte `i / 8`.

pub struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    filled: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> BitWriter {
        BitWriter {
            bytes: Vec::with_capacity(bytes + 8),
            acc: 0,
            filled: 0,
        }
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 32, higher bits of `value` must be zero).
    #[inline]
    pub fn write(&mut self, value: u32, n: u32) {
        debug_assert!(n <= 32 && (n == 32 || value >> n == 0));
        self.acc |= (value as u64) << self.filled;
        self.filled += n;
        if self.filled >= 32 {
            self.bytes
                .extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.filled -= 32;
        }
    }

    /// Writes `n` zero bits.
    pub fn zeros(&mut self, mut n: u64) {
        while n > 0 {
            let step = n.min(32) as u32;
            self.write(0, step);
            n -= step as u64;
        }
    }

    /// The stream, padded with zero bits to a whole byte.
    pub fn finish(mut self) -> Vec<u8> {
        let tail = self.filled.div_ceil(8) as usize;
        self.bytes
            .extend_from_slice(&self.acc.to_le_bytes()[..tail]);
        self.bytes
    }
}

/// The 57 or more bits of `bytes` from bit `pos`, low bit first; zeros past the end.
#[inline]
pub fn peek_at(bytes: &[u8], pos: u64) -> u64 {
    let byte = (pos / 8) as usize;
    let word = match bytes.get(byte..byte + 8) {
        Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => tail_word(bytes, byte),
    };
    word >> (pos % 8)
}

/// The last bytes of a stream, padded with zeros. Out of line: its copy is a memcpy call, and
/// inlined into a decoding loop the call's clobbers pushed the loop's state onto the stack.
#[cold]
#[inline(never)]
fn tail_word(bytes: &[u8], byte: usize) -> u64 {
    let mut buf = [0u8; 8];
    let rest = bytes.get(byte..).unwrap_or(&[]);
    buf[..rest.len()].copy_from_slice(rest);
    u64::from_le_bytes(buf)
}

/// Reads a bit stream; reading past the end yields zero bits, and [`BitReader::overrun`] says so.
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader { bytes, pos: 0 }
    }

    /// Starts reading at bit `pos`.
    pub fn at(bytes: &'a [u8], pos: u64) -> BitReader<'a> {
        BitReader { bytes, pos }
    }

    /// The next 57 or more bits, low bit first, without consuming them.
    #[inline]
    pub fn peek(&self) -> u64 {
        peek_at(self.bytes, self.pos)
    }

    #[inline]
    pub fn skip(&mut self, n: u32) {
        self.pos += n as u64;
    }

    /// Reads `n` ≤ 32 bits.
    #[inline]
    pub fn read(&mut self, n: u32) -> u32 {
        let v = (self.peek() & ((1u64 << n) - 1)) as u32;
        self.pos += n as u64;
        v
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// True once more bits were consumed than the stream holds.
    pub fn overrun(&self) -> bool {
        self.pos > self.bytes.len() as u64 * 8
    }

    /// True if every bit from the current position to the end of the last byte is zero.
    pub fn padding_is_zero(&self) -> bool {
        let total = self.bytes.len() as u64 * 8;
        if self.pos >= total {
            return true;
        }
        let left = (total - self.pos) as u32;
        left < 8 && self.peek() & ((1u64 << left) - 1) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_little_endian_by_bit() {
        let mut w = BitWriter::with_capacity(4);
        w.write(0b1, 1);
        w.write(0b10, 2);
        w.write(0xABC, 12);
        let bytes = w.finish();
        // bits: 1, then 0,1, then 0xABC from bit 3: value = 1 | 2<<1 | 0xABC<<3 = 0x55E5
        assert_eq!(bytes, vec![0xE5, 0x55]);
        let mut r = BitReader::new(&bytes);
        assert_eq!((r.read(1), r.read(2), r.read(12)), (1, 2, 0xABC));
        assert!(r.padding_is_zero());
        assert!(!r.overrun());
        r.read(8);
        assert!(r.overrun());
    }

    #[test]
    fn long_streams_round_trip() {
        let mut w = BitWriter::with_capacity(0);
        for i in 0..1000u32 {
            w.write(i % 97, 7);
            w.zeros(i as u64 % 70);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for i in 0..1000u32 {
            assert_eq!(r.read(7), i % 97);
            r.skip(i % 70);
        }
    }
}
