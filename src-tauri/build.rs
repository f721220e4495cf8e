//! Tauri's build step: reads tauri.conf.json and the capability, declares one `allow-<command>` /
//! `deny-<command>` permission per app command, and generates the app's context with ../ui/dist embedded.
//! Declaring the commands (an app manifest) is what makes Tauri check every app command against the capability:
//! a command no capability allows is refused. Generating the context here rather than with `generate_context!`
//! makes Cargo rebuild the app when the built UI changes (the build script watches ui/dist), so the window never
//! shows a stale UI.

/// The command names as strings (the same list lib.rs turns into the invoke handler).
macro_rules! desktop_commands {
    ($($command:ident),* $(,)?) => {
        const COMMANDS: &[&str] = &[$(stringify!($command)),*];
    };
}

include!("src/command_list.rs");

fn main() {
    let manifest = tauri_build::AppManifest::new().commands(COMMANDS);
    let attributes = tauri_build::Attributes::new().app_manifest(manifest).codegen(tauri_build::CodegenContext::new());
    if let Err(error) = tauri_build::try_build(attributes) {
        // A build script reports through its exit status; the chain says which file or setting is wrong.
        eprintln!("tauri build step failed: {error:#}");
        std::process::exit(1);
    }
}
