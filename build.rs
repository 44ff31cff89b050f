//! Builds every `kernels/*.cu` twice:
//! - with g++ against `src/emulator/cuda_emulator.h`, into the CPU emulator, together with a
//!   table that lets Rust launch each `extern "C" __global__` kernel by name; every `__shared__`
//!   declaration (in `kernels/*.cuh` too) is rewritten for the CPU first (`rewrite_shared`);
//! - with NVRTC (when libnvrtc is found) into PTX for `compute_90` and a CUBIN for `sm_90`,
//!   embedded in the binary for the cuda device. Without NVRTC the build still succeeds (with a
//!   warning) unless `HANDWRITTEN_REQUIRE_NVRTC=1`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The PTX target: the H200's compute capability. NVRTC 13 no longer accepts anything below 7.5.
const PTX_ARCH: &str = "compute_90";
const CUBIN_ARCH: &str = "sm_90";

struct KernelFile {
    path: PathBuf,
    /// `data` for `kernels/data.cu`.
    stem: String,
    source: String,
    /// The source with comments blanked out (lines kept), for scanning and for g++.
    code: String,
    kernels: Vec<String>,
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/gemm.cuh");
    println!("cargo:rerun-if-changed=src/emulator/cuda_emulator.h");
    println!("cargo:rerun-if-changed=src/emulator/cuda_emulator.cpp");
    println!("cargo:rerun-if-env-changed=HANDWRITTEN_REQUIRE_NVRTC");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let files = match read_kernel_files(Path::new("kernels")) {
        Ok(files) => files,
        Err(message) => fail(&message),
    };
    if let Err(message) = build_emulator(&files, &out_dir) {
        fail(&message);
    }
    if let Err(message) = build_gpu_modules(&files, &out_dir) {
        fail(&message);
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn read_kernel_files(dir: &Path) -> Result<Vec<KernelFile>, String> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    paths.sort();
    let mut files: Vec<KernelFile> = Vec::new();
    for path in paths {
        let source = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let code = blank_comments(&source);
        let kernels = find_kernels(&code).map_err(|e| format!("{}: {e}", path.display()))?;
        for kernel in &kernels {
            if let Some(other) = files.iter().find(|f| f.kernels.contains(kernel)) {
                return Err(format!(
                    "kernel {kernel} is defined in both {} and {}",
                    other.path.display(),
                    path.display()
                ));
            }
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        files.push(KernelFile {
            path,
            stem,
            source,
            code,
            kernels,
        });
    }
    Ok(files)
}

/// Replaces comments by spaces, keeping newlines so that line numbers still match.
fn blank_comments(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            i += 2;
            while i < bytes.len() && !bytes[i..].starts_with(b"*/") {
                if bytes[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 2;
            out.push(b' ');
        } else if bytes[i] == b'"' || bytes[i] == b'\'' {
            let quote = bytes[i];
            out.push(quote);
            i += 1;
            while i < bytes.len() && bytes[i] != quote {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    out.push(bytes[i]);
                    i += 1;
                }
                out.push(bytes[i]);
                i += 1;
            }
            if i < bytes.len() {
                out.push(quote);
                i += 1;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were removed")
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Byte offsets where `word` occurs as a whole identifier.
fn word_offsets<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(word)
        .map(|(at, _)| at)
        .filter(move |&at| {
            let bytes = code.as_bytes();
            let end = at + word.len();
            (at == 0 || !is_ident(bytes[at - 1])) && (end == bytes.len() || !is_ident(bytes[end]))
        })
}

fn line_of(code: &str, offset: usize) -> usize {
    code[..offset].matches('\n').count() + 1
}

/// The names of the `extern "C" __global__ void NAME(...)` kernels.
fn find_kernels(code: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for at in word_offsets(code, "__global__") {
        let before: String = code[..at]
            .split_whitespace()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        if before != "\"C\" extern" {
            return Err(format!(
                "line {}: write kernels as `extern \"C\" __global__ void name(...)`, so that both \
                 executors find them by name",
                line_of(code, at)
            ));
        }
        let rest = skip_launch_bounds(code[at + "__global__".len()..].trim_start())?;
        let rest = rest
            .strip_prefix("void")
            .map(str::trim_start)
            .ok_or_else(|| format!("line {}: a kernel returns void", line_of(code, at)))?;
        let rest = skip_launch_bounds(rest)?;
        let name: String = rest
            .bytes()
            .take_while(|&b| is_ident(b))
            .map(char::from)
            .collect();
        if name.is_empty() {
            return Err(format!(
                "line {}: cannot read the kernel's name",
                line_of(code, at)
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// `__launch_bounds__(...)` may stand before or after a kernel's return type.
fn skip_launch_bounds(code: &str) -> Result<&str, String> {
    match code.strip_prefix("__launch_bounds__") {
        Some(after) => {
            let close = after.find(')').ok_or("unclosed __launch_bounds__")?;
            Ok(after[close + 1..].trim_start())
        }
        None => Ok(code),
    }
}

/// Rewrites every `__shared__` declaration for g++, which has neither CUDA's storage class nor its
/// per-block lifetime:
/// - `extern __shared__ T name[];` becomes a pointer to the emulator's dynamic shared memory
///   (`static __thread` of unknown size is not C++), which run_block fills with NaN per block;
/// - `__shared__ T name[N]...;` becomes a `static __thread` array (blocks run one at a time on
///   each OS thread) plus a tag saying which block last poisoned it: the first thread of each
///   block to reach the declaration fills it with 0xff bytes (NaN as floats, -1 as integers), so
///   a kernel that reads shared memory before writing it sees NaN here as it sees garbage on a
///   GPU. A tag beside each site costs one compare per thread, where a per-block arena would need
///   an address table per site; it works unchanged inside templates (one array and tag per
///   instantiation) and keeps what a block wrote for a second call of the same function, as a GPU
///   does.
///
/// Anything else (file scope, initialisers, several names in one declaration) is refused with
/// its line, so no shared array escapes the poisoning.
fn rewrite_shared(code: &str) -> Result<String, String> {
    let mut out = String::with_capacity(code.len());
    let mut copied = 0;
    for at in word_offsets(code, "__shared__") {
        let line = line_of(code, at);
        let before = code[..at].trim_end();
        let is_extern = before.ends_with("extern")
            && !before[..before.len() - "extern".len()]
                .bytes()
                .next_back()
                .is_some_and(is_ident);
        let start = if is_extern {
            before.len() - "extern".len()
        } else {
            at
        };
        if start < copied {
            return Err(format!("line {line}: two __shared__ in one declaration"));
        }
        let end = at
            + code[at..]
                .find(';')
                .ok_or(format!("line {line}: unterminated __shared__ declaration"))?
            + 1;
        let declaration = &code[at + "__shared__".len()..end - 1];
        let replacement = if is_extern {
            extern_shared(declaration, line)?
        } else {
            if brace_depth(&code[..at]) == 0 {
                return Err(format!(
                    "line {line}: declare __shared__ arrays inside a function (the emulator \
                     poisons them per block where they are declared)"
                ));
            }
            static_shared(declaration, line)?
        };
        out.push_str(&code[copied..start]);
        out.push_str(&replacement);
        // Keep the line count, so that g++'s messages still point at the source lines.
        out.extend(std::iter::repeat_n(
            '\n',
            code[start..end].matches('\n').count(),
        ));
        copied = end;
    }
    out.push_str(&code[copied..]);
    Ok(out)
}

/// `__align__(n)` or `alignas(n)` at the front of a declaration, and the rest.
fn split_alignment(decl: &str, line: usize) -> Result<(&str, &str), String> {
    for attribute in ["__align__", "alignas"] {
        if let Some(after) = decl.strip_prefix(attribute) {
            let close = after
                .find(')')
                .ok_or(format!("line {line}: unclosed {attribute}"))?;
            let split = attribute.len() + close + 1;
            return Ok((&decl[..split], decl[split..].trim()));
        }
    }
    Ok(("", decl))
}

/// Splits `T name` into its type and name, or None.
fn type_and_name(declarator: &str) -> Option<(&str, &str)> {
    let declarator = declarator.trim_end();
    let name_start = declarator
        .rfind(|c: char| !is_ident(c as u8))
        .map_or(0, |i| i + 1);
    let (ty, name) = (declarator[..name_start].trim(), &declarator[name_start..]);
    let valid = !ty.is_empty() && !name.is_empty() && !name.as_bytes()[0].is_ascii_digit();
    valid.then_some((ty, name))
}

/// The body of `extern __shared__ T name[];` as a pointer to the dynamic shared memory.
fn extern_shared(declaration: &str, line: usize) -> Result<String, String> {
    let expected = || format!("line {line}: expected `extern __shared__ T name[];`");
    let (_, decl) = split_alignment(declaration.trim(), line)?;
    let declarator = decl
        .strip_suffix(']')
        .map(str::trim_end)
        .and_then(|d| d.strip_suffix('['))
        .ok_or_else(expected)?;
    let (ty, name) = type_and_name(declarator).ok_or_else(expected)?;
    Ok(format!(
        "{ty}* const {name} = static_cast<{ty}*>(hw::dynamic_shared());"
    ))
}

/// The body of `__shared__ T name[dims];` (dims optional) as a per-OS-thread array poisoned by
/// the first thread of each block to reach it.
fn static_shared(declaration: &str, line: usize) -> Result<String, String> {
    let expected = || {
        format!(
            "line {line}: the emulator handles `__shared__ [__align__(n)] T name[dims];` only \
             (one name, no initialiser)"
        )
    };
    let (alignment, decl) = split_alignment(declaration.trim(), line)?;
    if decl.contains(['=', ',', '(', '{', '}']) {
        return Err(expected());
    }
    let (declarator, dims) = match decl.find('[') {
        Some(open) if decl.ends_with(']') => (&decl[..open], &decl[open..]),
        Some(_) => return Err(expected()),
        None => (decl, ""),
    };
    let (ty, name) = type_and_name(declarator).ok_or_else(expected)?;
    let alignment = match alignment {
        "" => String::new(),
        written => written.replace("alignas", "__align__") + " ",
    };
    Ok(format!(
        "static __thread {alignment}{ty} {name}{dims}; \
         static __thread unsigned long long {name}_poisoned_in_block; \
         hw::poison_shared(&{name}, sizeof {name}, {name}_poisoned_in_block);"
    ))
}

/// How many braces are open at the end of `code` (comments already blanked; braces inside string
/// and character literals do not count).
fn brace_depth(code: &str) -> usize {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for byte in code.bytes() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == q {
                    quote = None;
                }
            }
            None => match byte {
                b'"' | b'\'' => quote = Some(byte),
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    depth
}

/// Writes each `kernels/*.cuh` into `out`, its `__shared__` declarations rewritten, with a
/// `#line` marker so that g++'s messages name the original file.
fn write_emulator_headers(kernels: &Path, out: &Path) -> Result<(), String> {
    let entries =
        fs::read_dir(kernels).map_err(|e| format!("cannot list {}: {e}", kernels.display()))?;
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if path.extension().is_none_or(|ext| ext != "cuh") {
            continue;
        }
        let source = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let code = rewrite_shared(&blank_comments(&source))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let original = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let target = out.join(path.file_name().unwrap());
        fs::write(
            &target,
            format!("#line 1 \"{}\"\n{code}", original.display()),
        )
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

fn build_emulator(files: &[KernelFile], out_dir: &Path) -> Result<(), String> {
    let dir = out_dir.join("emulator");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        // The emulator runs every thread of every kernel: unoptimised it is unbearably slow.
        .opt_level(2)
        .include("src/emulator")
        // The kernels' own headers (gemm.cuh), rewritten as the kernel files are, live beside
        // the generated units; kernels/ itself is not on the path, so no header escapes that.
        .include(&dir)
        .flag("-fno-strict-aliasing")
        // Fibers read threadIdx and friends constantly; keep thread-local access a single load.
        .flag("-ftls-model=initial-exec")
        .flag("-Wno-unknown-pragmas")
        .file("src/emulator/cuda_emulator.cpp");

    write_emulator_headers(Path::new("kernels"), &dir)?;
    let mut tables = String::from(
        "// Generated by build.rs: the kernel tables of every kernels/*.cu file.\n\
         #include \"cuda_emulator.h\"\n\nnamespace hw {\n",
    );
    let mut listed = Vec::new();
    for file in files.iter().filter(|f| !f.kernels.is_empty()) {
        let table = format!("kernels_{}", identifier(&file.stem));
        let code =
            rewrite_shared(&file.code).map_err(|e| format!("{}: {e}", file.path.display()))?;
        let path = fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        let mut unit = format!(
            "// Generated by build.rs from {}.\n#include \"cuda_emulator.h\"\n#line 1 \"{}\"\n{code}\n",
            file.path.display(),
            path.display()
        );
        writeln!(unit, "#line 1 \"kernel table of {}\"", file.path.display()).unwrap();
        writeln!(
            unit,
            "namespace hw {{\nextern const KernelEntry {table}[] = {{"
        )
        .unwrap();
        for kernel in &file.kernels {
            writeln!(unit, "    HW_KERNEL_ENTRY({kernel}),").unwrap();
        }
        writeln!(
            unit,
            "}};\nextern const unsigned {table}_count = {};\n}}",
            file.kernels.len()
        )
        .unwrap();
        let unit_path = dir.join(format!("{}.cpp", file.stem));
        fs::write(&unit_path, unit)
            .map_err(|e| format!("cannot write {}: {e}", unit_path.display()))?;
        build.file(&unit_path);
        writeln!(
            tables,
            "extern const KernelEntry {table}[];\nextern const unsigned {table}_count;"
        )
        .unwrap();
        listed.push(table);
    }
    let entries: Vec<String> = listed
        .iter()
        .map(|t| format!("{{{t}, &{t}_count}}"))
        .collect();
    let entries = if entries.is_empty() {
        "{nullptr, &kernel_table_count}".into()
    } else {
        entries.join(", ")
    };
    writeln!(
        tables,
        "extern const unsigned kernel_table_count = {};\n\
         extern const KernelTable kernel_tables[] = {{{entries}}};\n}}",
        listed.len()
    )
    .unwrap();
    let tables_path = dir.join("kernel_tables.cpp");
    fs::write(&tables_path, tables)
        .map_err(|e| format!("cannot write {}: {e}", tables_path.display()))?;
    build.file(&tables_path);
    build.compile("cuda_emulator");
    Ok(())
}

fn identifier(stem: &str) -> String {
    stem.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Compiles every file with NVRTC and writes `kernel_modules.rs`, which embeds the results.
fn build_gpu_modules(files: &[KernelFile], out_dir: &Path) -> Result<(), String> {
    let generated = out_dir.join("kernel_modules.rs");
    let require = env::var("HANDWRITTEN_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    // cudarc panics when the library is missing, so look before calling into it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let missing = "NVRTC (libnvrtc.so.13 or .12) is not on LD_LIBRARY_PATH or the system \
                       library path";
        if require {
            return Err(format!("HANDWRITTEN_REQUIRE_NVRTC=1, but {missing}"));
        }
        println!(
            "cargo:warning={missing}: building without GPU kernels (the cuda device will say so)"
        );
        let rust = "pub(crate) const NVRTC_VERSION: Option<(i32, i32)> = None;\n\
                    pub(crate) static KERNEL_MODULES: &[KernelModule] = &[];\n";
        return fs::write(&generated, rust)
            .map_err(|e| format!("cannot write {}: {e}", generated.display()));
    }
    let (major, minor) = nvrtc_version()?;
    let dir = out_dir.join("gpu");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut rust = format!(
        "pub(crate) const NVRTC_VERSION: Option<(i32, i32)> = Some(({major}, {minor}));\n\
         pub(crate) static KERNEL_MODULES: &[KernelModule] = &[\n"
    );
    for file in files {
        let name = file.path.display().to_string();
        let source = inline_includes(&file.source, &file.path)?;
        let ptx = nvrtc_compile(&source, &name, PTX_ARCH, Output::Ptx)?;
        let cubin = nvrtc_compile(&source, &name, CUBIN_ARCH, Output::Cubin)?;
        let ptx_path = dir.join(format!("{}.ptx", file.stem));
        let cubin_path = dir.join(format!("{}.cubin", file.stem));
        fs::write(&ptx_path, &ptx)
            .map_err(|e| format!("cannot write {}: {e}", ptx_path.display()))?;
        fs::write(&cubin_path, &cubin)
            .map_err(|e| format!("cannot write {}: {e}", cubin_path.display()))?;
        println!(
            "cargo:warning=NVRTC {major}.{minor} compiled {name}: {} kernels, {PTX_ARCH} PTX + \
             {CUBIN_ARCH} CUBIN",
            file.kernels.len()
        );
        writeln!(
            rust,
            "    KernelModule {{ file: {name:?}, kernels: &{:?}, ptx: include_str!({:?}), \
             cubin: include_bytes!({:?}) }},",
            file.kernels,
            ptx_path.display().to_string(),
            cubin_path.display().to_string()
        )
        .unwrap();
    }
    rust.push_str("];\n");
    fs::write(&generated, rust).map_err(|e| format!("cannot write {}: {e}", generated.display()))
}

/// Replaces each `#include "header"` line by the header's text from the kernel's own folder, with
/// `#line` markers so that NVRTC's messages still name the right file and line. (NVRTC has no
/// include path of its own here; g++ finds the same headers with `-I kernels`.)
fn inline_includes(source: &str, path: &Path) -> Result<String, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = String::with_capacity(source.len());
    for (index, line) in source.lines().enumerate() {
        let header = line
            .trim()
            .strip_prefix("#include")
            .map(str::trim)
            .and_then(|rest| rest.strip_prefix('"'))
            .and_then(|rest| rest.strip_suffix('"'));
        match header {
            Some(header) => {
                let header_path = dir.join(header);
                let text = fs::read_to_string(&header_path).map_err(|e| {
                    format!(
                        "{}:{}: cannot read {}: {e}",
                        path.display(),
                        index + 1,
                        header_path.display()
                    )
                })?;
                writeln!(out, "#line 1 \"{}\"", header_path.display()).unwrap();
                out.push_str(&text);
                writeln!(out, "\n#line {} \"{}\"", index + 2, path.display()).unwrap();
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

enum Output {
    Ptx,
    Cubin,
}

fn nvrtc_compile(source: &str, name: &str, arch: &str, output: Output) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CStr, CString};

    let source_c = CString::new(source).map_err(|_| format!("{name} contains a NUL byte"))?;
    let name_c = CString::new(name).unwrap();
    let program = result::create_program(&source_c, Some(&name_c))
        .map_err(|e| format!("{name}: nvrtcCreateProgram failed: {e:?}"))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // Lets compute-sanitizer and profilers point at source lines.
        "--generate-line-info".to_string(),
    ];
    let compiled = unsafe { result::compile_program(program, &options) };
    let outcome = match compiled {
        Err(e) => {
            let log = unsafe { result::get_program_log(program) }.unwrap_or_default();
            let log = unsafe { CStr::from_ptr(log.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            Err(format!(
                "NVRTC could not compile {name} for {arch} ({e:?}):\n{log}"
            ))
        }
        Ok(()) => match output {
            Output::Ptx => unsafe { result::get_ptx(program) }
                .map(|ptx| {
                    let bytes: Vec<u8> = ptx.into_iter().map(|c| c as u8).collect();
                    bytes.into_iter().take_while(|&b| b != 0).collect()
                })
                .map_err(|e| format!("{name}: nvrtcGetPTX failed: {e:?}")),
            Output::Cubin => unsafe {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(program, &mut size)
                    .result()
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast())
                            .result()
                            .map(|()| cubin)
                    })
            }
            .map_err(|e| format!("{name}: nvrtcGetCUBIN failed: {e:?}")),
        },
    };
    unsafe { result::destroy_program(program) }.map_err(|e| format!("{name}: {e:?}"))?;
    outcome
}
