//! What guest kernel a configuration boots, for `isola check`: the boot path QEMU takes with it
//! (PVH entry of an ELF vmlinux, or the Linux boot protocol of a bzImage), its release string
//! and whether it is isola's tailored kernel or the Debian one.
//!
//! Everything here is read from the file, cheaply: the headers, the ELF notes, and for an ELF a
//! scan for the kernel's `Linux version ...` banner.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How QEMU's `-kernel` boots an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note: entered directly in 32-bit mode (PVH).
    PvhElf,
    /// ELF without the PVH note: QEMU cannot boot it.
    ElfWithoutPvh,
    /// bzImage: real-mode setup and the in-guest decompressor run first.
    BzImage,
    /// Neither.
    Unknown,
}

/// Which kernel it is, by its release string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Built by guest/build-kernel.sh (`CONFIG_LOCALVERSION="-isola"`).
    Tailored,
    /// Debian's packaged kernel (`...-cloud-amd64`, `...-amd64`).
    Debian,
    Other,
}

/// The facts `isola check` prints about the configured kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    pub boot_path: BootPath,
    pub release: Option<String>,
}

impl KernelInfo {
    pub fn kind(&self) -> Kind {
        self.release.as_deref().map_or(Kind::Other, kind_of)
    }
}

/// Classifies a kernel release string.
pub fn kind_of(release: &str) -> Kind {
    if release.ends_with("-isola") {
        Kind::Tailored
    } else if release.ends_with("-amd64") {
        Kind::Debian
    } else {
        Kind::Other
    }
}

const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Whether an ELF note section holds a Xen PVH entry note.
pub fn notes_have_pvh(notes: &[u8]) -> bool {
    let mut off = 0;
    let align4 = |n: usize| (n + 3) & !3;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_at(notes, off),
        u32_at(notes, off + 4),
        u32_at(notes, off + 8),
    ) {
        let name_start = off + 12;
        let name = notes.get(name_start..name_start + namesz as usize);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0".as_slice()) {
            return true;
        }
        off = name_start + align4(namesz as usize) + align4(descsz as usize);
    }
    false
}

/// The boot path of a kernel image from its first bytes (at least the first 4 KiB) and a way to
/// read a range of the file (for the ELF program headers and notes).
pub fn boot_path(head: &[u8], mut read_at: impl FnMut(u64, usize) -> Option<Vec<u8>>) -> BootPath {
    if head.starts_with(b"\x7fELF") {
        // ELF64 little-endian: e_phoff @0x20, e_phentsize @0x36, e_phnum @0x38.
        let (Some(phoff), Some(phentsize), Some(phnum)) =
            (u64_at(head, 0x20), u16_at(head, 0x36), u16_at(head, 0x38))
        else {
            return BootPath::Unknown;
        };
        let Some(phdrs) = read_at(phoff, phentsize as usize * phnum as usize) else {
            return BootPath::Unknown;
        };
        for ph in phdrs.chunks_exact(phentsize.max(1) as usize) {
            // p_type @0, p_offset @8, p_filesz @0x20.
            let (Some(kind), Some(off), Some(size)) =
                (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 0x20))
            else {
                continue;
            };
            if kind == PT_NOTE && size < 1 << 20 {
                if let Some(notes) = read_at(off, size as usize) {
                    if notes_have_pvh(&notes) {
                        return BootPath::PvhElf;
                    }
                }
            }
        }
        BootPath::ElfWithoutPvh
    } else if head.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        BootPath::BzImage
    } else {
        BootPath::Unknown
    }
}

/// The release in a `Linux version <release> (...` banner found in `bytes`.
pub fn release_from_banner(bytes: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(i) = bytes[from..]
        .windows(BANNER.len())
        .position(|w| w == BANNER)
    {
        let start = from + i + BANNER.len();
        let rest = &bytes[start..];
        let end = rest
            .iter()
            .position(|&c| c == b' ' || c == 0 || c == b'\n')
            .unwrap_or(rest.len());
        let release = &rest[..end];
        if release.first().is_some_and(u8::is_ascii_digit) && end < 100 {
            return std::str::from_utf8(release).ok().map(str::to_string);
        }
        from = start;
    }
    None
}

/// The release of a bzImage: the NUL-terminated string at 0x200 + the header's kernel_version
/// field (@0x20e), present since boot protocol 2.00.
pub fn bzimage_release(head: &[u8]) -> Option<String> {
    let ptr = u16_at(head, 0x20e)? as usize + 0x200;
    let s = head.get(ptr..)?;
    let end = s.iter().position(|&c| c == 0 || c == b' ')?;
    std::str::from_utf8(&s[..end]).ok().map(str::to_string)
}

/// Inspects a kernel image file.
pub fn inspect(path: &Path) -> std::io::Result<KernelInfo> {
    let mut f = File::open(path)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = read_full(&mut f, &mut head)?;
    head.truncate(n);
    let path_kind = boot_path(&head, |off, len| {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    });
    let release = match path_kind {
        BootPath::BzImage => bzimage_release(&head),
        BootPath::PvhElf | BootPath::ElfWithoutPvh => {
            // The banner sits in .rodata: scan the file in chunks (a few tens of MB at most).
            f.seek(SeekFrom::Start(0))?;
            let mut found = None;
            let mut carry: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 4 << 20];
            loop {
                let n = read_full(&mut f, &mut chunk)?;
                if n == 0 {
                    break;
                }
                carry.extend_from_slice(&chunk[..n]);
                if let Some(r) = release_from_banner(&carry) {
                    found = Some(r);
                    break;
                }
                // Keep a tail so a banner split across chunks is still found.
                let keep = carry.len().min(256);
                carry.drain(..carry.len() - keep);
            }
            found
        }
        BootPath::Unknown => None,
    };
    Ok(KernelInfo {
        boot_path: path_kind,
        release,
    })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The `isola check` line for the kernel: (is it bootable, text).
pub fn describe(info: &KernelInfo) -> (bool, String) {
    let kind = match info.kind() {
        Kind::Tailored => "tailored isola kernel",
        Kind::Debian => "Debian kernel (the fallback; `make guest` builds the faster tailored one)",
        Kind::Other => "kernel of unknown origin",
    };
    let release = info.release.as_deref().unwrap_or("release unknown");
    let (ok, path) = match info.boot_path {
        BootPath::PvhElf => (true, "PVH: the ELF vmlinux is entered directly"),
        BootPath::BzImage => (
            true,
            "bzImage: through the firmware and the in-guest decompressor (an ELF vmlinux boots faster by PVH)",
        ),
        BootPath::ElfWithoutPvh => (
            false,
            "ELF without a PVH entry note (CONFIG_PVH=n): QEMU cannot boot it with -kernel",
        ),
        BootPath::Unknown => (false, "neither an ELF vmlinux nor a bzImage"),
    };
    (ok, format!("{release}, {kind}; {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// An ELF64 header + one PT_NOTE program header + the notes, as one file image.
    fn elf(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 0x40;
        f[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        f[ph + 0x20..ph + 0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    fn path_of(file: &[u8]) -> BootPath {
        boot_path(file, |off, len| {
            file.get(off as usize..off as usize + len)
                .map(<[u8]>::to_vec)
        })
    }

    #[test]
    fn pvh_note_is_found_after_other_notes() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x1000u32.to_le_bytes(),
        ));
        assert_eq!(path_of(&elf(&notes)), BootPath::PvhElf);
    }

    #[test]
    fn elf_without_the_note_is_not_pvh() {
        // A Xen note of another type, and the right type under another name.
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"GNU\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]));
        assert_eq!(path_of(&elf(&notes)), BootPath::ElfWithoutPvh);
        assert!(!notes_have_pvh(&[1, 2, 3]), "truncated notes");
    }

    #[test]
    fn bzimage_by_its_header_and_release() {
        let mut f = vec![0u8; 0x1000];
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        f[0x500..0x500 + 30].copy_from_slice(b"6.1.0-56-cloud-amd64 (debian-k");
        assert_eq!(path_of(&f), BootPath::BzImage);
        assert_eq!(bzimage_release(&f).as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(path_of(&[0u8; 0x1000]), BootPath::Unknown);
    }

    #[test]
    fn banner_release_skips_format_strings() {
        let bytes = b"xx Linux version %s\0 Linux version 6.1.192-isola (isola@isola) (gcc)\0";
        assert_eq!(release_from_banner(bytes).as_deref(), Some("6.1.192-isola"));
        assert_eq!(release_from_banner(b"no banner here"), None);
    }

    #[test]
    fn kinds_by_release() {
        assert_eq!(kind_of("6.1.192-isola"), Kind::Tailored);
        assert_eq!(kind_of("6.1.0-56-cloud-amd64"), Kind::Debian);
        assert_eq!(kind_of("6.8.0"), Kind::Other);
        let info = KernelInfo {
            boot_path: BootPath::PvhElf,
            release: Some("6.1.192-isola".into()),
        };
        let (ok, text) = describe(&info);
        assert!(ok);
        assert!(text.contains("tailored") && text.contains("PVH"), "{text}");
        let bad = KernelInfo {
            boot_path: BootPath::ElfWithoutPvh,
            release: None,
        };
        assert!(!describe(&bad).0);
    }

    #[test]
    fn inspects_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut notes = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        notes.extend(b"pad Linux version 6.1.192-isola (x) #1\0");
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, elf(&notes)).unwrap();
        let info = inspect(&p).unwrap();
        assert_eq!(info.boot_path, BootPath::PvhElf);
        assert_eq!(info.kind(), Kind::Tailored);
    }
}
