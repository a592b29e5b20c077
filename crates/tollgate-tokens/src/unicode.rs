//! Character classes of code points, read from the two-stage table that the
//! build script derived from `regex-syntax`.
//!
//! `STAGE1[cp >> 7]` names a block; `STAGE2[block * 128 + (cp & 127)]` is the
//! class. Block 0 covers ASCII, so `STAGE2[b]` is the class of an ASCII byte.

use crate::shared::{BLOCK_SHIFT, class};

const STAGE1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unicode.stage1"));
const STAGE2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unicode.stage2"));

/// Class of a code point.
#[inline(always)]
pub(crate) fn class_of(cp: u32) -> u8 {
    let block = STAGE1.get((cp >> BLOCK_SHIFT) as usize).copied().unwrap_or(0);
    let low = cp as usize & ((1 << BLOCK_SHIFT) - 1);
    STAGE2.get(((block as usize) << BLOCK_SHIFT) | low).copied().unwrap_or(class::OTHER)
}

/// Class and UTF-8 length of the character starting at byte `i` of `s`.
///
/// `s` must be valid UTF-8 (it always comes from a `&str`) and `i` a
/// character boundary before its end.
#[inline(always)]
pub(crate) fn class_at(s: &[u8], i: usize) -> (u8, usize) {
    let b0 = s.get(i).copied().unwrap_or(0);
    if b0 < 0x80 {
        return (STAGE2.get(b0 as usize).copied().unwrap_or(class::OTHER), 1);
    }
    let (cp, len) = decode_multibyte(s, i, b0);
    (class_of(cp), len)
}

/// Code point and length of a multi-byte UTF-8 sequence whose lead byte is
/// `b0`, at byte `i` of `s`.
#[inline(always)]
fn decode_multibyte(s: &[u8], i: usize, b0: u8) -> (u32, usize) {
    let cont = |k: usize| u32::from(s.get(i + k).copied().unwrap_or(0x80) & 0x3F);
    let b0 = u32::from(b0);
    if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4)
    }
}

#[cfg(test)]
mod tests {
    // On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn ascii_classes() {
        assert_eq!(class_of(u32::from('a')), class::LL);
        assert_eq!(class_of(u32::from('Z')), class::LU);
        assert_eq!(class_of(u32::from('7')), class::NUM);
        assert_eq!(class_of(u32::from(' ')), class::WS);
        assert_eq!(class_of(u32::from('\n')), class::WS);
        assert_eq!(class_of(u32::from('\'')), class::OTHER);
        assert_eq!(class_of(u32::from('/')), class::OTHER);
    }

    #[test]
    fn some_unicode_classes() {
        assert_eq!(class_of(0x00A0), class::WS); // NBSP
        assert_eq!(class_of(0x2028), class::WS);
        assert_eq!(class_of(0x200B), class::OTHER); // ZWSP is not White_Space
        assert_eq!(class_of(0x0301), class::MARK);
        assert_eq!(class_of(0x01C5), class::LU); // Lt
        assert_eq!(class_of(0x02B0), class::LO); // Lm
        assert_eq!(class_of(0x4E2D), class::LO); // CJK
        assert_eq!(class_of(0x0663), class::NUM); // Arabic-Indic digit
        assert_eq!(class_of(0x2163), class::NUM); // Roman numeral (Nl)
        assert_eq!(class_of(0xE0100), class::MARK); // variation selector supplement
        assert_eq!(class_of(0x1F600), class::OTHER); // emoji
    }

    #[test]
    fn decodes_every_scalar_value() {
        let mut buf = [0u8; 4];
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let s = c.encode_utf8(&mut buf).as_bytes();
            let (cls, len) = class_at(s, 0);
            assert_eq!(len, s.len());
            assert_eq!(cls, class_of(u32::from(c)));
            if c.is_ascii() {
                assert_eq!(decode_multibyte(s, 0, s[0]).1, 2); // not used for ASCII
            } else {
                assert_eq!(decode_multibyte(s, 0, s[0]).0, u32::from(c));
            }
        }
    }
}
