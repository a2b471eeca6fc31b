//! Guards the static guest build: with the `seccomp` feature, libseccomp must be linked
//! statically (LIBSECCOMP_LINK_TYPE=static), or the "static" agent would need libseccomp.so.2
//! and the guest, which has no dynamic loader, could not run it.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBSECCOMP_LINK_TYPE");
    let seccomp = std::env::var_os("CARGO_FEATURE_SECCOMP").is_some();
    let crt_static = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .map(|f| f.split(',').any(|x| x == "crt-static"))
        .unwrap_or(false);
    let link_type = std::env::var("LIBSECCOMP_LINK_TYPE").unwrap_or_default();
    if seccomp && crt_static && link_type != "static" {
        panic!(
            "isola-agent: the `seccomp` feature in a static (+crt-static) build needs \
             LIBSECCOMP_LINK_TYPE=static (and LIBSECCOMP_LIB_PATH if libseccomp.a is not in the \
             default search path); otherwise the agent would depend on libseccomp.so.2"
        );
    }
}
