// `sqlx::migrate!` embeds the migration files at compile time, but cargo does not know the macro read them: without
// this, adding or editing a migration would not rebuild the crate and tests would run the old schema.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
