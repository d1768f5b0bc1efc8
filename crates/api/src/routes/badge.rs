//! `/jobs/{name}/badge.svg`: the status of a job's newest ended build (a matrix job's newest
//! ended matrix) as a small SVG image, for a README or a wall screen. It needs a reading
//! token like every read, unless the job says `public_badge` — then anyone may fetch it (it
//! tells only that status), as an image embedded in a page cannot send a token.

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use kiln_model::BuildStatus;
use kiln_service_kit::auth::Reader;
use kiln_service_kit::error::ApiError;

use super::job_name;
use crate::app::AppState;

/// How many of the newest builds are looked through for one that has ended.
const LOOK_BACK: usize = 20;

pub(crate) async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let def = state.store.get_job(&name).await?;
    if !def.as_ref().is_some_and(|d| d.public_badge) {
        // Whether a job exists is itself for readers only.
        Reader::extract(&req).await?;
    }
    let Some(def) = def else {
        return Err(ApiError::NotFound(format!("job {name} not found")));
    };
    // A matrix job's builds come in groups: look back over two whole matrices more.
    let look_back = LOOK_BACK + 2 * def.builds_per_trigger();
    let (builds, _) = state.store.list_builds(&name, 0, look_back).await?;
    let mut status = None;
    let mut seen_groups = Vec::new();
    for b in builds.into_iter().filter(|b| b.status.is_final()) {
        let group = b.matrix.as_ref().map(|m| m.group);
        if group.is_some_and(|g| seen_groups.contains(&g)) {
            continue;
        }
        seen_groups.extend(group);
        // A matrix counts once all its cells have ended, with the whole matrix's status.
        if let Some(whole) = state.store.ended_as_a_whole(b).await? {
            status = Some(whole.status);
            break;
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("Cache-Control", "no-cache"))
        .body(svg(name.as_str(), status)))
}

/// A flat two-part badge: the job's name, then its status in a colour that says it.
fn svg(label: &str, status: Option<BuildStatus>) -> String {
    let (message, colour) = match status {
        Some(BuildStatus::Success) => ("passing", "#4c1"),
        Some(BuildStatus::Failure) => ("failing", "#e05d44"),
        Some(BuildStatus::TimedOut) => ("timed out", "#e05d44"),
        Some(BuildStatus::Error | BuildStatus::Lost) => ("error", "#fe7d37"),
        Some(s) => (s.as_str(), "#9f9f9f"),
        None => ("no builds", "#9f9f9f"),
    };
    // Verdana 11px is about 7 px a character; 10 px of padding on each part.
    let width = |s: &str| s.chars().count() * 7 + 10;
    let (lw, mw) = (width(label), width(message));
    let label = xml_escape(label);
    format!(
        concat!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{label}: {message}">"##,
            r##"<title>{label}: {message}</title>"##,
            r##"<rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>"##,
            r##"<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11">"##,
            r##"<text x="{lx}" y="14">{label}</text><text x="{mx}" y="14">{message}</text></g></svg>"##
        ),
        w = lw + mw,
        lw = lw,
        mw = mw,
        lx = lw / 2,
        mx = lw + mw / 2,
        label = label,
        message = message,
        colour = colour,
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_badge_says_the_status_in_its_colour() {
        let s = svg("app", Some(BuildStatus::Success));
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>"), "{s}");
        assert!(s.contains(">passing</text>") && s.contains("#4c1"), "{s}");
        assert!(s.contains(r#"aria-label="app: passing""#), "{s}");
        assert!(svg("app", Some(BuildStatus::Failure)).contains("#e05d44"));
        assert!(svg("app", None).contains(">no builds</text>"));
        assert_eq!(xml_escape(r#"a<b>&"c""#), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
