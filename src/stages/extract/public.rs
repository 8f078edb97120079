//! Which addresses are worth asking MISP about.
//!
//! The ranges are IANA's special-purpose registries. They are written out
//! here rather than taken from `std`'s `is_global` because that method is
//! still unstable, and because the product promises exactly this list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_SPECIAL: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8
    (0x0A00_0000, 8),  // 10.0.0.0/8
    (0x6440_0000, 10), // 100.64.0.0/10
    (0x7F00_0000, 8),  // 127.0.0.0/8
    (0xA9FE_0000, 16), // 169.254.0.0/16
    (0xAC10_0000, 12), // 172.16.0.0/12
    (0xC000_0000, 24), // 192.0.0.0/24
    (0xC000_0200, 24), // 192.0.2.0/24
    (0xC058_6300, 24), // 192.88.99.0/24
    (0xC0A8_0000, 16), // 192.168.0.0/16
    (0xC612_0000, 15), // 198.18.0.0/15
    (0xC633_6400, 24), // 198.51.100.0/24
    (0xCB00_7100, 24), // 203.0.113.0/24
    (0xE000_0000, 4),  // 224.0.0.0/4
    (0xF000_0000, 4),  // 240.0.0.0/4
];

const V6_SPECIAL: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // 2001::/23
    (0x2001_0db8 << 96, 32), // 2001:db8::/32
    (0x2002 << 112, 16),     // 2002::/16
    (0x3fff << 112, 20),     // 3fff::/20
];

fn in_prefix(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    let shift = bits - u32::from(len);
    if shift >= 128 {
        return true;
    }
    (addr >> shift) == (net >> shift)
}

pub fn is_public_v4(ip: Ipv4Addr) -> bool {
    let a = u128::from(u32::from(ip));
    !V4_SPECIAL
        .iter()
        .any(|&(net, len)| in_prefix(a, u128::from(net), len, 32))
}

pub fn is_public_v6(ip: Ipv6Addr) -> bool {
    let a = u128::from(ip);
    // Global unicast is 2000::/3; everything outside is special or unallocated.
    if a >> 125 != 0b001 {
        return false;
    }
    !V6_SPECIAL
        .iter()
        .any(|&(net, len)| in_prefix(a, net, len, 128))
}

/// The address that stands for `ip` in MISP: the embedded IPv4 address of an
/// IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::/96`) address, else
/// `ip` itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let seg = v6.segments();
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            ip
        }
        v4 => v4,
    }
}

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4() {
        for ip in [
            "8.8.8.8",
            "49.88.112.73",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "223.255.255.255",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "0.1.2.3",
            "10.1.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn v6() {
        for ip in [
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "3ffe::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "2001::1",
            "2001:1ff::1",
            "2001:db8::1",
            "2002::1",
            "3fff::1",
            "3fff:fff::1",
            "64:ff9b::1.2.3.4",
            "4000::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn canonical_unwraps_mapped_and_nat64() {
        let c = |s: &str| canonical(s.parse().unwrap()).to_string();
        assert_eq!(c("::ffff:185.220.101.5"), "185.220.101.5");
        assert_eq!(c("64:ff9b::185.220.101.5"), "185.220.101.5");
        assert_eq!(c("2001:db8::1"), "2001:db8::1");
    }
}
