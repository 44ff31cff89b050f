//! Builds every `kernels/*.cu` twice:
//! - with g++ against `src/emulator/cuda_emulator.h`, into the CPU emulator, together with a
//!   table that lets Rust launch each `extern "C" __global__` kernel by name; every `__shared__`
//!   declaration (in `kernels/*.cuh` too) is rewritten for the CPU first (`rewrite_shared`);
//!   once for each architecture the kernels tell apart (`__CUDA_ARCH__ >= N` in their source, plus
//!   the oldest supported, 7.5), so the emulated device can play any GPU (`emulator_builds`);
//! - with NVRTC (when libnvrtc is found) into a fat binary: a CUBIN for each architecture in
//!   `CUBIN_ARCHS` that the NVRTC knows, with ptxas's resource report of every kernel, and PTX of
//!   the oldest architecture that has all of the file's kernels, for GPUs newer than every CUBIN.
//!   Without NVRTC the build still succeeds (with a warning) unless `HANDWRITTEN_REQUIRE_NVRTC=1`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The real architectures people's GPUs have, from Turing on: T4 and RTX 20 (7.5), A100 (8.0),
/// RTX 30 and A10 (8.6), RTX 40 and L4 (8.9), H100 (9.0), B200 (10.0), RTX 50 (12.0). A CUBIN is
/// built for each one the NVRTC supports; a GPU of another minor version runs the CUBIN of its
/// major with the highest minor not above its own (8.7 runs sm_86).
const CUBIN_ARCHS: [u32; 7] = [75, 80, 86, 89, 90, 100, 120];
/// The oldest architecture the kernels support: every kernel exists from here on unless its source
/// puts it under `#if __CUDA_ARCH__ >= N`.
const OLDEST_ARCH: u32 = 75;

struct KernelFile {
    path: PathBuf,
    /// `data` for `kernels/data.cu`.
    stem: String,
    source: String,
    /// The source with comments blanked out (lines kept), for scanning and for g++.
    code: String,
    kernels: Vec<Kernel>,
}

/// One `extern "C" __global__` kernel, as its source declares it.
struct Kernel {
    name: String,
    /// The first argument of its `__launch_bounds__`, as written (a number or a macro).
    max_threads: Option<String>,
    /// The oldest architecture it is compiled for (`#if __CUDA_ARCH__ >= N` around it).
    min_arch: u32,
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
    let emulated_archs = match emulator_builds(Path::new("kernels")) {
        Ok(archs) => archs,
        Err(message) => fail(&message),
    };
    if let Err(message) = build_emulator(&files, &emulated_archs, &out_dir) {
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
            let defined_in = |f: &KernelFile| f.kernels.iter().any(|k| k.name == kernel.name);
            if let Some(other) = files.iter().find(|f| defined_in(f)) {
                return Err(format!(
                    "kernel {} is defined in both {} and {}",
                    kernel.name,
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

/// The `extern "C" __global__ void NAME(...)` kernels.
fn find_kernels(code: &str) -> Result<Vec<Kernel>, String> {
    let min_archs = arch_of_lines(code)?;
    let mut kernels = Vec::new();
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
        let (bounds_before, rest) =
            split_launch_bounds(code[at + "__global__".len()..].trim_start())?;
        let rest = rest
            .strip_prefix("void")
            .map(str::trim_start)
            .ok_or_else(|| format!("line {}: a kernel returns void", line_of(code, at)))?;
        let (bounds_after, rest) = split_launch_bounds(rest)?;
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
        let min_arch = min_archs[line_of(code, at) - 1]
            .clone()
            .map_err(|e| format!("line {}: kernel {name}: {e}", line_of(code, at)))?;
        kernels.push(Kernel {
            name,
            max_threads: bounds_before.or(bounds_after),
            min_arch,
        });
    }
    Ok(kernels)
}

/// `__launch_bounds__(...)` may stand before or after a kernel's return type: its first argument
/// (the most threads a block may have), and the code after it.
fn split_launch_bounds(code: &str) -> Result<(Option<String>, &str), String> {
    match code.strip_prefix("__launch_bounds__") {
        Some(after) => {
            let close = after.find(')').ok_or("unclosed __launch_bounds__")?;
            let arguments = after[..close].trim_start().trim_start_matches('(');
            let max_threads = arguments.split(',').next().unwrap_or("").trim();
            if max_threads.is_empty() {
                return Err("__launch_bounds__ without a thread count".to_string());
            }
            Ok((
                Some(max_threads.to_string()),
                after[close + 1..].trim_start(),
            ))
        }
        None => Ok((None, code)),
    }
}

/// For each line, the oldest architecture code there is compiled for: the highest N of the
/// `#if __CUDA_ARCH__ >= N` blocks open around it, or an error where an `#else` or `#elif` of
/// such a block would make that a newest architecture instead (kernels only appear from some
/// architecture on).
fn arch_of_lines(code: &str) -> Result<Vec<Result<u32, String>>, String> {
    // One entry per open #if: the architecture it requires, or the reason code in it cannot say.
    let mut open: Vec<Result<Option<u32>, String>> = Vec::new();
    let mut lines = Vec::new();
    for (index, line) in code.lines().enumerate() {
        let directive = line.trim_start().strip_prefix('#').map(str::trim_start);
        if let Some(directive) = directive {
            let word: String = directive
                .bytes()
                .take_while(|&b| is_ident(b))
                .map(char::from)
                .collect();
            let rest = directive[word.len()..].trim();
            match word.as_str() {
                "if" => open.push(Ok(
                    arch_condition(rest).map_err(|e| format!("line {}: {e}", index + 1))?
                )),
                "ifdef" | "ifndef" => open.push(Ok(None)),
                "elif" | "else" => {
                    let top = open
                        .last_mut()
                        .ok_or(format!("line {}: #{word} without #if", index + 1))?;
                    if matches!(top, Ok(Some(_))) {
                        *top = Err(format!(
                            "it follows the #{word} of an `#if __CUDA_ARCH__ >= N` (line {}): \
                             put code for older GPUs under its own #if",
                            index + 1
                        ));
                    }
                }
                "endif" => {
                    let _closed = open
                        .pop()
                        .ok_or(format!("line {}: #endif without #if", index + 1))?;
                }
                _ => {}
            }
        }
        let mut arch = Ok(OLDEST_ARCH);
        for condition in &open {
            arch = match (arch, condition) {
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(e.clone()),
                (Ok(a), Ok(n)) => Ok(n.map_or(a, |n| a.max(n))),
            };
        }
        lines.push(arch);
    }
    Ok(lines)
}

/// The architecture an `#if` condition requires: N for `__CUDA_ARCH__ >= N0`, None for a condition
/// that does not name the architecture. Other comparisons with `__CUDA_ARCH__` are refused, so that
/// the architectures the kernels tell apart are exactly the thresholds written this way.
fn arch_condition(condition: &str) -> Result<Option<u32>, String> {
    if !word_offsets(condition, "__CUDA_ARCH__").any(|_| true) {
        return Ok(None);
    }
    let threshold = condition
        .strip_prefix("__CUDA_ARCH__")
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix(">="))
        .map(str::trim)
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| n % 10 == 0);
    match threshold {
        Some(n) => Ok(Some(n / 10)),
        None => Err(format!(
            "`#if {condition}`: test the architecture only as `#if __CUDA_ARCH__ >= N0` (one \
             threshold per #if), and tell GPU compiles from the emulator with __CUDACC__"
        )),
    }
}

/// The architectures the emulator is built for: the oldest supported one and every threshold
/// the kernels and their headers test, so that each emulated GPU runs the code NVRTC would
/// compile for it (the build of the highest threshold not above its compute capability).
fn emulator_builds(kernels: &Path) -> Result<Vec<u32>, String> {
    let mut archs = vec![OLDEST_ARCH];
    let entries =
        fs::read_dir(kernels).map_err(|e| format!("cannot list {}: {e}", kernels.display()))?;
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if !path
            .extension()
            .is_some_and(|ext| ext == "cu" || ext == "cuh")
        {
            continue;
        }
        let source = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let code = blank_comments(&source);
        for line in code.lines() {
            let directive = line.trim_start().strip_prefix('#').map(str::trim_start);
            let mentions = word_offsets(line, "__CUDA_ARCH__").any(|_| true);
            let condition = directive.and_then(|d| d.strip_prefix("if ")).map(str::trim);
            match condition.map(arch_condition) {
                Some(Ok(Some(arch))) => archs.push(arch),
                Some(Err(e)) => return Err(format!("{}: {e}", path.display())),
                _ if mentions => {
                    return Err(format!(
                        "{}: `{}`: test the architecture only as `#if __CUDA_ARCH__ >= N0`",
                        path.display(),
                        line.trim()
                    ))
                }
                _ => {}
            }
        }
    }
    archs.sort_unstable();
    archs.dedup();
    Ok(archs)
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

fn build_emulator(files: &[KernelFile], archs: &[u32], out_dir: &Path) -> Result<(), String> {
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
        "// Generated by build.rs: the kernel tables of every kernels/*.cu file, per architecture.\n\
         #include \"cuda_emulator.h\"\n\nnamespace hw {\n",
    );
    let mut listed = Vec::new();
    for file in files.iter().filter(|f| !f.kernels.is_empty()) {
        // Each architecture's build lives in a namespace of its own, so the kernels lose their C
        // linkage here (their names would clash) and are found through the tables instead.
        let code = rewrite_shared(&file.code)
            .map_err(|e| format!("{}: {e}", file.path.display()))?
            .replace("extern \"C\"", "          ");
        let path = fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        for &arch in archs {
            let namespace = format!("hw_sm{arch}");
            let table = format!("kernels_sm{arch}_{}", identifier(&file.stem));
            let mut unit = format!(
                "// Generated by build.rs from {}, as compiled for sm_{arch}.\n\
                 #include \"cuda_emulator.h\"\n#define __CUDA_ARCH__ {arch}0\n\
                 namespace {namespace} {{\n#line 1 \"{}\"\n{code}\n}}\n",
                file.path.display(),
                path.display()
            );
            writeln!(unit, "#line 1 \"kernel table of {}\"", file.path.display()).unwrap();
            writeln!(
                unit,
                "namespace hw {{\nextern const KernelEntry {table}[] = {{"
            )
            .unwrap();
            let kernels: Vec<&Kernel> =
                file.kernels.iter().filter(|k| k.min_arch <= arch).collect();
            for kernel in &kernels {
                let max_threads = kernel.max_threads.as_deref().unwrap_or("0");
                writeln!(
                    unit,
                    "    HW_KERNEL_ENTRY({namespace}, {}, {max_threads}),",
                    kernel.name
                )
                .unwrap();
            }
            if kernels.is_empty() {
                unit.push_str("    {nullptr, nullptr, nullptr, 0},\n");
            }
            writeln!(
                unit,
                "}};\nextern const unsigned {table}_count = {};\n}}",
                kernels.len()
            )
            .unwrap();
            let unit_path = dir.join(format!("{}.sm{arch}.cpp", file.stem));
            fs::write(&unit_path, unit)
                .map_err(|e| format!("cannot write {}: {e}", unit_path.display()))?;
            build.file(&unit_path);
            writeln!(
                tables,
                "extern const KernelEntry {table}[];\nextern const unsigned {table}_count;"
            )
            .unwrap();
            listed.push((arch, table));
        }
    }
    let entries: Vec<String> = listed
        .iter()
        .map(|(arch, t)| format!("{{{t}, &{t}_count, {arch}}}"))
        .collect();
    let entries = if entries.is_empty() {
        "{nullptr, &kernel_table_count, 0}".into()
    } else {
        entries.join(",\n    ")
    };
    writeln!(
        tables,
        "extern const unsigned kernel_table_count = {};\n\
         extern const KernelTable kernel_tables[] = {{\n    {entries}}};\n}}",
        listed.len()
    )
    .unwrap();
    let tables_path = dir.join("kernel_tables.cpp");
    fs::write(&tables_path, tables)
        .map_err(|e| format!("cannot write {}: {e}", tables_path.display()))?;
    build.file(&tables_path);
    build.compile("cuda_emulator");

    let builds = out_dir.join("emulator_builds.rs");
    let rust = format!(
        "/// The architectures the emulator's kernels were compiled for (`__CUDA_ARCH__` / 10).\n\
         pub(crate) const EMULATOR_BUILDS: &[u32] = &{archs:?};\n"
    );
    fs::write(&builds, rust).map_err(|e| format!("cannot write {}: {e}", builds.display()))
}

fn identifier(stem: &str) -> String {
    stem.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Compiles every file with NVRTC and writes `kernel_modules.rs`, which embeds the results: per
/// file its CUBINs and PTX, and the resources ptxas reported for each kernel on each architecture.
fn build_gpu_modules(files: &[KernelFile], out_dir: &Path) -> Result<(), String> {
    let generated = out_dir.join("kernel_modules.rs");
    let require = env::var("HANDWRITTEN_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    // cudarc panics when the library is missing, so look before calling into it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let missing = "NVRTC (libnvrtc.so.12) is not on LD_LIBRARY_PATH or the system library path";
        if require {
            return Err(format!("HANDWRITTEN_REQUIRE_NVRTC=1, but {missing}"));
        }
        println!(
            "cargo:warning={missing}: building without GPU kernels (the cuda device will say so)"
        );
        let rust = "pub(crate) const NVRTC_VERSION: Option<(i32, i32)> = None;\n\
                    pub(crate) static KERNEL_MODULES: &[KernelModule] = &[];\n\
                    pub(crate) static KERNEL_RESOURCES: &[KernelResources] = &[];\n";
        return fs::write(&generated, rust)
            .map_err(|e| format!("cannot write {}: {e}", generated.display()));
    }
    let (major, minor) = nvrtc_version()?;
    let supported = nvrtc_supported_archs()?;
    let archs: Vec<u32> = CUBIN_ARCHS
        .into_iter()
        .filter(|arch| supported.contains(arch))
        .collect();
    let dir = out_dir.join("gpu");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    // NVRTC compiles programs independently: one thread per file.
    let compiled: Vec<Result<CompiledFile, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| scope.spawn(|| compile_file(file, &archs, &dir)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("an NVRTC thread panicked".into()))
            })
            .collect()
    });

    let mut rust = format!(
        "pub(crate) const NVRTC_VERSION: Option<(i32, i32)> = Some(({major}, {minor}));\n\
         pub(crate) static KERNEL_MODULES: &[KernelModule] = &[\n"
    );
    let mut resources =
        String::from("pub(crate) static KERNEL_RESOURCES: &[KernelResources] = &[\n");
    for (file, compiled) in files.iter().zip(compiled) {
        let compiled = compiled?;
        let name = file.path.display().to_string();
        let kernels: Vec<&str> = file.kernels.iter().map(|k| k.name.as_str()).collect();
        let cubins: Vec<String> = compiled
            .cubins
            .iter()
            .map(|(arch, path)| {
                format!(
                    "Cubin {{ arch: {arch}, image: include_bytes!({:?}) }}",
                    path.display().to_string()
                )
            })
            .collect();
        writeln!(
            rust,
            "    KernelModule {{ file: {name:?}, kernels: &{kernels:?}, ptx_arch: {}, \
             ptx: include_str!({:?}), cubins: &[{}] }},",
            compiled.ptx_arch,
            compiled.ptx.display().to_string(),
            cubins.join(", ")
        )
        .unwrap();
        for r in &compiled.resources {
            writeln!(
                resources,
                "    KernelResources {{ kernel: {:?}, arch: {}, registers: {}, shared_bytes: {}, \
                 stack_bytes: {}, spill_stores: {}, spill_loads: {} }},",
                r.kernel,
                r.arch,
                r.registers,
                r.shared_bytes,
                r.stack_bytes,
                r.spill_stores,
                r.spill_loads
            )
            .unwrap();
        }
        println!(
            "cargo:warning=NVRTC {major}.{minor} compiled {name}: {} kernels, CUBINs for {}, \
             PTX for compute_{}",
            kernels.len(),
            compiled
                .cubins
                .iter()
                .map(|(arch, _)| format!("sm_{arch}"))
                .collect::<Vec<_>>()
                .join(" "),
            compiled.ptx_arch
        );
    }
    rust.push_str("];\n");
    resources.push_str("];\n");
    rust.push_str(&resources);
    fs::write(&generated, rust).map_err(|e| format!("cannot write {}: {e}", generated.display()))
}

/// What NVRTC made of one file: a CUBIN per architecture, the PTX, and ptxas's report.
struct CompiledFile {
    cubins: Vec<(u32, PathBuf)>,
    ptx_arch: u32,
    ptx: PathBuf,
    resources: Vec<Resources>,
}

/// One kernel's line of ptxas's report (`-v`) for one architecture.
#[derive(Default)]
struct Resources {
    kernel: String,
    arch: u32,
    registers: u32,
    shared_bytes: u32,
    stack_bytes: u32,
    spill_stores: u32,
    spill_loads: u32,
}

fn compile_file(file: &KernelFile, archs: &[u32], dir: &Path) -> Result<CompiledFile, String> {
    let name = file.path.display().to_string();
    let source = inline_includes(&file.source, &file.path)?;
    let mut cubins = Vec::new();
    let mut resources = Vec::new();
    for &arch in archs {
        let (cubin, log) = nvrtc_compile(&source, &name, &format!("sm_{arch}"), Output::Cubin)?;
        let report = parse_ptxas_report(&log, arch)
            .map_err(|e| format!("{name}: ptxas's report for sm_{arch}: {e}\n{log}"))?;
        // The kernels NVRTC built must be those the source declares for this architecture.
        let mut built: Vec<&str> = report.iter().map(|r| r.kernel.as_str()).collect();
        let mut declared: Vec<&str> = file
            .kernels
            .iter()
            .filter(|k| k.min_arch <= arch)
            .map(|k| k.name.as_str())
            .collect();
        built.sort_unstable();
        declared.sort_unstable();
        if built != declared {
            return Err(format!(
                "{name}: for sm_{arch} NVRTC built the kernels {built:?}, the source declares \
                 {declared:?} (architecture guards are read from `#if __CUDA_ARCH__ >= N0` only)"
            ));
        }
        let path = dir.join(format!("{}.sm_{arch}.cubin", file.stem));
        fs::write(&path, &cubin).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        cubins.push((arch, path));
        resources.extend(report);
    }
    // PTX for GPUs newer than every CUBIN: of the oldest architecture that has every kernel.
    let ptx_arch = file
        .kernels
        .iter()
        .map(|k| k.min_arch)
        .max()
        .unwrap_or(OLDEST_ARCH);
    let (ptx, _) = nvrtc_compile(&source, &name, &format!("compute_{ptx_arch}"), Output::Ptx)?;
    let ptx_path = dir.join(format!("{}.compute_{ptx_arch}.ptx", file.stem));
    fs::write(&ptx_path, &ptx).map_err(|e| format!("cannot write {}: {e}", ptx_path.display()))?;
    Ok(CompiledFile {
        cubins,
        ptx_arch,
        ptx: ptx_path,
        resources,
    })
}

/// Reads ptxas's `-v` report: for each kernel, "Compiling entry function 'NAME' for 'sm_XX'",
/// then "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers, [N bytes smem, ]N bytes cmem[0]...".
fn parse_ptxas_report(log: &str, arch: u32) -> Result<Vec<Resources>, String> {
    let mut kernels: Vec<Resources> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            kernels.push(Resources {
                kernel,
                arch,
                ..Resources::default()
            });
            continue;
        }
        let Some(current) = kernels.last_mut() else {
            continue;
        };
        if line.contains("bytes stack frame") {
            current.stack_bytes =
                number_before(line, "bytes stack frame").ok_or(line.to_string())?;
            current.spill_stores =
                number_before(line, "bytes spill stores").ok_or(line.to_string())?;
            current.spill_loads =
                number_before(line, "bytes spill loads").ok_or(line.to_string())?;
        } else if line.contains("Used ") && line.contains(" registers") {
            current.registers = number_before(line, "registers").ok_or(line.to_string())?;
            current.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    if let Some(k) = kernels.iter().find(|k| k.registers == 0) {
        return Err(format!("no register count for {}", k.kernel));
    }
    Ok(kernels)
}

fn nvrtc_supported_archs() -> Result<Vec<u32>, String> {
    use cudarc::nvrtc::sys;
    let mut count = 0;
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }
        .result()
        .map_err(|e| format!("nvrtcGetNumSupportedArchs failed: {e:?}"))?;
    let mut archs = vec![0i32; count.max(0) as usize];
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| format!("nvrtcGetSupportedArchs failed: {e:?}"))?;
    Ok(archs.into_iter().map(|a| a as u32).collect())
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

/// Compiles one program for `arch`; returns the PTX or CUBIN and NVRTC's log (ptxas's report).
fn nvrtc_compile(
    source: &str,
    name: &str,
    arch: &str,
    output: Output,
) -> Result<(Vec<u8>, String), String> {
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
        // No contraction of a*b + c into an FMA behind the source's back: g++ builds the emulator
        // without it, so the kernels round alike on both; where a fused multiply-add is meant,
        // the source says fmaf.
        "--fmad=false".to_string(),
        // ptxas's resource report (registers, spills, shared memory) into the log.
        "--ptxas-options=-v".to_string(),
    ];
    let compiled = unsafe { result::compile_program(program, &options) };
    let log = unsafe { result::get_program_log(program) }.unwrap_or_default();
    let log = unsafe { CStr::from_ptr(log.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let outcome = match compiled {
        Err(e) => Err(format!(
            "NVRTC could not compile {name} for {arch} ({e:?}):\n{log}"
        )),
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
    outcome.map(|image| (image, log))
}
