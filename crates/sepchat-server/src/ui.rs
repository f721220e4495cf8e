//! The built web UI: the files of a folder (`ui/dist`), or, when it has not been built, one page saying so.

use std::path::Path;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

/// Shown at `/` when there is no built UI. Inline styles are not used: the CSP refuses them.
const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>sepchat</title></head>
<body>
<h1>sepchat</h1>
<p>The web UI is not built. Build it in <code>ui/</code> (<code>npm ci &amp;&amp; npm run build</code>) and restart
<code>sepchat serve</code>, or point <code>--ui-dir</code> at a built copy. The API answers under
<code>/rpc/</code> meanwhile.</p>
</body>
</html>
";

pub(crate) fn router(ui_dir: Option<&Path>) -> Router {
    match ui_dir.filter(|dir| dir.join("index.html").is_file()) {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "serving the UI");
            // Unknown paths are 404s rather than `index.html`: the UI has one page and no client-side routes.
            Router::new().fallback_service(ServeDir::new(dir))
        }
        None => {
            if let Some(dir) = ui_dir {
                tracing::warn!(dir = %dir.display(), "no built UI there (no index.html); serving a placeholder page");
            }
            Router::new().route("/", get(|| async { Html(NOT_BUILT) }))
        }
    }
}
