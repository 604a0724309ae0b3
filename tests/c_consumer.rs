//! A C program that includes `include/xki_pkcs11.h`, `dlopen`s the built module and walks the
//! PKCS#11 discovery functions the way a C consumer would. Checks that the header compiles,
//! that its macros agree with what the module reports, and that only the three discovery
//! functions resolve with `dlsym`.

mod support;
use std::path::Path;
use std::process::Command;
use support::built_module::built_module as shared_object;

const PROGRAM: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include "xki_pkcs11.h"

/* Just enough of pkcs11.h (the Unix ABI: CK_ULONG is unsigned long, default packing). */
typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { unsigned char major, minor; } CK_VERSION;
typedef struct { unsigned char *pInterfaceName; void *pFunctionList; CK_ULONG flags; } CK_INTERFACE;
typedef CK_RV (*GetInterfaceList)(CK_INTERFACE *, CK_ULONG *);
typedef CK_RV (*GetInterface)(unsigned char *, CK_VERSION *, CK_INTERFACE **, CK_ULONG);
typedef CK_RV (*GetFunctionList)(void **);
#define CKR_OK 0UL
#define CKR_ARGUMENTS_BAD 7UL
#define CKR_BUFFER_TOO_SMALL 0x150UL

static int failures = 0;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "FAILED: %s (line %d)\n", #c, __LINE__); failures++; } } while (0)

static CK_VERSION version_of(const CK_INTERFACE *i) { return *(const CK_VERSION *)i->pFunctionList; }

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }

    GetInterfaceList get_list = (GetInterfaceList)dlsym(lib, "C_GetInterfaceList");
    GetInterface get_iface = (GetInterface)dlsym(lib, "C_GetInterface");
    GetFunctionList get_fl = (GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CHECK(get_list && get_iface && get_fl);
    if (!(get_list && get_iface && get_fl)) return 1;
    CHECK(dlsym(lib, "C_Initialize") == NULL);
    CHECK(dlsym(lib, "C_Encrypt") == NULL);

    CK_ULONG n = 0;
    CHECK(get_list(NULL, &n) == CKR_OK);
    CHECK(n == 3);
    CK_INTERFACE list[3];
    CK_ULONG one = 1;
    CHECK(get_list(list, &one) == CKR_BUFFER_TOO_SMALL && one == 3);
    CHECK(get_list(list, &n) == CKR_OK && n == 3);
    CHECK(strcmp((const char *)list[2].pInterfaceName, XKI_STATUS_INTERFACE_NAME) == 0);
    for (int k = 0; k < 2; k++) {
        CHECK(strcmp((const char *)list[k].pInterfaceName, XKI_PKCS11_INTERFACE_NAME) == 0);
        CHECK(list[k].flags == 0);
    }
    CHECK(version_of(&list[0]).major == 3 && version_of(&list[0]).minor == 0);
    CHECK(version_of(&list[1]).major == 2 && version_of(&list[1]).minor == 40);

    CK_INTERFACE *iface = NULL;
    CHECK(get_iface(NULL, NULL, &iface, 0) == CKR_OK);
    CHECK(iface && iface->pFunctionList == list[0].pFunctionList);
    CK_VERSION v240 = { 2, 40 };
    CHECK(get_iface((unsigned char *)XKI_PKCS11_INTERFACE_NAME, &v240, &iface, 0) == CKR_OK);
    CHECK(iface && iface->pFunctionList == list[1].pFunctionList);
    CHECK(get_iface((unsigned char *)"PKCS#11", NULL, &iface, 0) == CKR_ARGUMENTS_BAD);

    void *fl = NULL;
    CHECK(get_fl(NULL) == CKR_ARGUMENTS_BAD);
    CHECK(get_fl(&fl) == CKR_OK && fl == list[1].pFunctionList);

    printf("%d.%d %s\n", XKI_PKCS11_VERSION_MAJOR, XKI_PKCS11_VERSION_MINOR, XKI_PKCS11_SONAME);
    dlclose(lib);
    return failures ? 1 : 0;
}
"#;

#[test]
fn c_program_discovers_the_module_through_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("consumer.c");
    let binary = dir.path().join("consumer");
    std::fs::write(&source, PROGRAM).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");

    let cc = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .arg("-I")
        .arg(&include)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let run = Command::new(&binary).arg(shared_object()).output().unwrap();
    assert!(
        run.status.success(),
        "C consumer failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let expected = format!(
        "{}.{} libxki_pkcs11.so.0\n",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), expected);
}
