//! Demo data: realistic session-replay segments with known recurring problems, and no network.
//!
//! # What is generated
//! A catalogue of product problems (checkout Pay button does nothing, password reset email never
//! arrives, CSV export times out with 504, ...), each with a few differently worded templates
//! whose `{a|b}` slots pick synonyms and `{page}` a page name, so no two descriptions need be
//! equal. Three kinds, taken in catalogue order:
//! - recurring problems: a Zipf-like share of the problem segments each (the first few are
//!   frequent, then a long tail), at least 3 segments each when the budget allows;
//! - rare problems: exactly 2 segments each, from two different users;
//! - crashes: exactly 1 segment each, always high impact (a failure in the text, mostly also
//!   abandonment), which should end as noise and become Tasks by the high-impact noise rescue.
//!
//! With `problems = n`: `n / 7` crashes (at most [`CRASHES`]), `n / 7` rare problems (at most
//! [`RARE`]) and the rest recurring (at most [`RECURRING`]). The defaults (30 problems, 3000
//! segments, 25% noise) give 22 recurring problems (about 600 segments for the most frequent,
//! about 30 for the least), 4 rare ones with 2 segments, 4 crashes, and 750 ordinary segments
//! over 20 activities ("User browsed the pricing page and scrolled through plans") with no
//! problem (truth `None`). So the pipeline should find 26 problems with at least 2 occurrences
//! as Tasks, 4 single-segment Tasks of high impact, and about 20 impact-0 Tasks of ordinary
//! activity (see the end of this doc for what it actually finds). [`planned_occurrences`]
//! tells the exact plan for any parameters, and [`generate_with_truth`] the problem behind every
//! segment.
//!
//! Users and sessions: every problem reaches an "audience" (a random 10-100% of the users), and
//! users in it are drawn with a skew, so some hit a problem repeatedly. About 12% of problem
//! occurrences repeat in the session of an earlier occurrence of the same problem, and a third of
//! the ordinary segments fall into existing sessions, so sessions hold several segments and
//! distinct users < distinct sessions < segments. Sessions start over the last `days` days
//! (at least an hour ago); segments are 15-90 s long at increasing offsets in their session.
//! `document_id` is `{session_id}:{start}:{end}` with offsets as `HH:MM:SS`; session ids are
//! UUIDv7-shaped from the session start. `inserted_at` is when the analysis landed: a few
//! minutes after the session ended, never after `now_ms`. Rows come sorted by
//! `(inserted_at, document_id)`, as a source returns them. Metadata sometimes carries the
//! structured fields the impact rules read (`error_count`, `rage_clicks`, `dead_clicks`,
//! `exited`), as a recorder would.
//!
//! # Embeddings
//! No embedding model is available offline, so a deterministic stand-in gives the geometry a
//! real one has: paraphrases of one problem are close, different problems are far apart, shared
//! words pull texts together a little. Each row is
//! `normalize(A * latent + B * bag_of_words + C * gaussian)`, every part a unit vector:
//! - `bag_of_words`: every lowercase word and bigram maps to a fixed pseudo-random sparse unit
//!   vector (16 coordinates of +-1/4, picked by a hash of the token: feature hashing); these are
//!   summed (bigrams weigh 0.7, stop words 0.2) and normalized. Fixed across seeds, like a model.
//! - `latent`: a dense gaussian unit direction per problem, from a hash of the problem's key, so
//!   it is the same in every seed and batch (a later batch's problem matches the earlier Task).
//!   Ordinary segments get a direction of their own each: they resemble nothing else.
//! - `gaussian`: per-row noise.
//!
//! With `A^2 = 0.78, B^2 = 0.14, C^2 = 0.08` for problem rows, same-problem pairs sit at cosine
//! distance about 0.15-0.2 and different problems at 0.9-1.0 (random directions in 3072
//! dimensions are nearly orthogonal). Ordinary rows use `A^2 = 0.8, B^2 = 0.1, C^2 = 0.1`.
//! Rows are built in parallel, each from its own seeded stream, so the output depends on the
//! seed only, not on the thread count.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::matrix::normalize;
use crate::segment::RawSegment;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemoParams {
    pub seed: u64,
    pub team_id: i64,
    /// Distinct problems to plant; capped at the catalogue size.
    pub problems: usize,
    pub users: usize,
    /// Sessions start within this many days before `now` (at least 1).
    pub days: usize,
    /// Total rows returned.
    pub segments: usize,
    /// Share of rows that show no problem, in [0, 1].
    pub noise_share: f64,
    /// Embedding dimension.
    pub dim: usize,
}

impl Default for DemoParams {
    fn default() -> Self {
        Self {
            seed: 42,
            team_id: 1,
            problems: 30,
            users: 400,
            days: 5,
            segments: 3000,
            noise_share: 0.25,
            dim: 3072,
        }
    }
}

/// Mixing weights of the three parts of an embedding (see the module doc).
const MIX: [f32; 3] = [0.883, 0.374, 0.283];
/// Non-zero coordinates of a token's sparse vector.
const TOKEN_NNZ: usize = 16;
const BIGRAM_WEIGHT: f32 = 0.7;
const STOP_WEIGHT: f32 = 0.2;
/// Share of problem occurrences that repeat in an earlier session with the same problem.
const SAME_SESSION_REPEAT: f64 = 0.12;
/// Share of ordinary segments that fall into an existing session.
const ORDINARY_IN_EXISTING_SESSION: f64 = 0.35;

/// Sessions take no new segments after this many seconds.
const MAX_SESSION_OFFSET_S: u32 = 1800;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Recurring,
    Rare,
    Crash,
}

/// Structured metadata a problem's segments may carry (each present half the time).
const ERRORS: u8 = 1;
const RAGE: u8 = 2;
const DEAD: u8 = 4;
const EXIT: u8 = 8;

struct Problem {
    /// Stable name; the latent direction is derived from it.
    key: &'static str,
    title: &'static str,
    kind: Kind,
    templates: &'static [&'static str],
    pages: &'static [&'static str],
    signals: u8,
}

/// Most recurring problems, rare problems and crashes the catalogue holds.
pub const RECURRING: usize = 26;
pub const RARE: usize = 6;
pub const CRASHES: usize = 6;

const fn p(
    key: &'static str,
    title: &'static str,
    kind: Kind,
    templates: &'static [&'static str],
    pages: &'static [&'static str],
    signals: u8,
) -> Problem {
    Problem {
        key,
        title,
        kind,
        templates,
        pages,
        signals,
    }
}

use Kind::{Crash, Rare, Recurring};

/// The problems. Their index here is the stable problem id of [`generate_with_truth`].
const CATALOGUE: &[Problem] = &[
    p(
        "checkout-pay-noop",
        "Checkout Pay button does nothing",
        Recurring,
        &[
            "User {clicked|tapped|pressed} the Pay button on the {page} {several times|repeatedly|again and again} but nothing happened",
            "On the {page} the Pay button did not respond; the user {kept clicking it|clicked it over and over} and {then left the page|eventually gave up}",
            "User entered card details on the {page} and pressed Pay, but the payment was never submitted and no confirmation appeared",
            "The Pay button on the {page} {looked active but did nothing|had no effect} when the user {clicked|tapped} it",
        ],
        &["checkout page", "payment step", "order summary page"],
        RAGE | DEAD | EXIT,
    ),
    p(
        "password-reset-email",
        "Password reset email never arrives",
        Recurring,
        &[
            "User requested a password reset from the {page} and {waited|kept waiting} but the reset email never arrived",
            "After {submitting|entering} their email on the {page}, the user {clicked|pressed} Resend {several times|repeatedly} because no reset link came",
            "User could not log in, asked for a password reset twice on the {page}, and {gave up|left the site} when no email showed up",
        ],
        &["login page", "forgot password page", "sign-in screen"],
        RAGE | EXIT,
    ),
    p(
        "date-picker-closes",
        "Date picker closes on click",
        Recurring,
        &[
            "User opened the date picker on the {page}, but it closed {immediately|right away} when they clicked a day, so no date was selected",
            "The calendar popup on the {page} {kept closing|closed unexpectedly} whenever the user tried to pick a date; they {retried|tried again} several times",
            "User {struggled|had trouble} selecting a date because the date picker on the {page} disappeared on every click",
        ],
        &["booking page", "report filters", "invoice form"],
        RAGE | DEAD,
    ),
    p(
        "csv-export-504",
        "CSV export times out with 504",
        Recurring,
        &[
            "User {clicked|requested} Export to CSV on the {page}; the spinner ran for a minute and then a 504 Gateway Timeout error appeared",
            "Exporting the {report|table|data} as CSV from the {page} failed with an HTTP 504 after a long wait",
            "The CSV export on the {page} timed out; the user {retried the export|tried again} and got the same 504 error",
        ],
        &["reports page", "analytics dashboard", "customers table"],
        ERRORS,
    ),
    p(
        "search-no-results",
        "Search finds nothing for existing items",
        Recurring,
        &[
            "User searched for a product they had bought before on the {page}, but the search returned no results",
            "Search on the {page} showed an empty list for {an exact item name|a known order number}, so the user {scrolled through categories manually|browsed the menu instead}",
            "User typed the exact name into search on the {page} and got nothing back, then {looked confused|tried different spellings}",
        ],
        &["store search", "help center", "orders page"],
        0,
    ),
    p(
        "signup-phone-rejected",
        "Signup form rejects valid phone numbers",
        Recurring,
        &[
            "User entered a valid phone number on the {page} but the form kept showing 'invalid phone number' and would not submit",
            "The {page} rejected the user's phone number in international format; they re-entered it several times {before giving up|and then abandoned signup}",
            "Validation error on the {page}: the phone field did not accept a number with a country code, blocking account creation",
        ],
        &["signup page", "registration form", "onboarding step"],
        ERRORS | EXIT,
    ),
    p(
        "avatar-upload-fails",
        "Profile photo upload fails",
        Recurring,
        &[
            "User {tried to upload|selected} a profile photo on the {page}; the progress bar reached 100% and then an error said the upload failed",
            "Uploading an image on the {page} failed {repeatedly|every time} with 'Something went wrong'",
            "User attempted to change their avatar on the {page} but the new picture was never saved",
        ],
        &["profile settings", "account page", "team settings"],
        ERRORS,
    ),
    p(
        "cart-empty-after-login",
        "Cart empties after login",
        Recurring,
        &[
            "User added items to the cart, logged in, and the {page} was empty afterwards, so they {looked confused|searched for the items again}",
            "After signing in, the user's cart items disappeared from the {page}; they had to add everything again",
            "Items the user had put in the cart were gone after signing in on the {page}, and the user {left the site|abandoned the purchase}",
        ],
        &["cart page", "checkout page", "mini cart"],
        EXIT,
    ),
    p(
        "settings-save-spinner",
        "Settings save spinner never finishes",
        Recurring,
        &[
            "User changed notification settings on the {page} and clicked Save; the spinner kept spinning and the changes were never saved",
            "Saving on the {page} hung with an endless spinner; the user refreshed and found their changes lost",
            "The Save button on the {page} got stuck loading, so the user {refreshed the page|clicked Save again} several times",
        ],
        &[
            "settings page",
            "notification preferences",
            "workspace settings",
        ],
        RAGE,
    ),
    p(
        "mobile-menu-covers-continue",
        "Mobile menu covers the Continue button",
        Recurring,
        &[
            "On a phone, the sticky menu on the {page} covered the Continue button, and the user tapped around trying to reach it",
            "User could not {tap|reach} Continue on the {page} because the navigation bar overlapped it on mobile",
            "The bottom banner on the {page} hid the Continue button on small screens; the user scrolled up and down looking for it",
        ],
        &["shipping step", "checkout page", "onboarding step"],
        DEAD | RAGE,
    ),
    p(
        "coupon-rejected",
        "Valid coupon code rejected",
        Recurring,
        &[
            "User entered a promo code on the {page} and got 'code not valid' even though the code was {from a current email campaign|still active}",
            "The discount code field on the {page} rejected a valid coupon; the user retyped it several times",
            "User tried three different coupon codes on the {page}, all were rejected with an error, and they abandoned the cart",
        ],
        &["cart page", "checkout page", "payment step"],
        ERRORS | EXIT,
    ),
    p(
        "dashboard-slow",
        "Dashboard takes 30+ seconds to load",
        Recurring,
        &[
            "The {page} took over 30 seconds to load; the user {waited on a blank screen|stared at loading placeholders} and refreshed twice",
            "User opened the {page} and the charts stayed in a loading state for a long time before anything appeared",
            "Very slow load of the {page}: widgets kept loading for half a minute and the user switched to another tab",
        ],
        &["analytics dashboard", "home dashboard", "metrics overview"],
        0,
    ),
    p(
        "two-factor-code-rejected",
        "2FA code not accepted",
        Recurring,
        &[
            "User entered the six-digit code from their authenticator app on the {page} and got 'invalid code' several times",
            "Two-factor login on the {page} rejected fresh codes, and the user could not sign in",
            "The verification code step on the {page} kept failing even with a new code, locking the user out",
        ],
        &["login page", "two-factor screen", "security check"],
        ERRORS | RAGE,
    ),
    p(
        "filters-reset",
        "Table filters reset on navigation",
        Recurring,
        &[
            "User set several filters on the {page}, opened a row, came back, and all filters had reset",
            "Filters on the {page} were cleared every time the user navigated back, so they applied them {again and again|over and over}",
            "The {page} dropped the user's filter selection after they opened a detail view; the user looked confused and set them again",
        ],
        &["customers table", "orders page", "events list"],
        0,
    ),
    p(
        "invite-link-expired",
        "Team invite link says expired",
        Recurring,
        &[
            "User opened a team invitation on the {page} and was told the invite link had expired, although it was sent minutes earlier",
            "Accepting an invite failed with 'link expired' on the {page}; the user asked a colleague to resend it",
            "The {page} showed an expired-link error for a brand new invitation",
        ],
        &["invite page", "team settings", "join workspace page"],
        ERRORS,
    ),
    p(
        "invoice-pdf-blank",
        "Invoice PDF downloads blank",
        Recurring,
        &[
            "User downloaded an invoice from the {page} and the PDF opened as a blank page",
            "The invoice PDF from the {page} was empty except for the header; the user downloaded it again with the same result",
            "Downloading invoices on the {page} produced blank PDF files",
        ],
        &["billing page", "invoices list", "account page"],
        0,
    ),
    p(
        "country-dropdown-stuck",
        "Country dropdown won't open",
        Recurring,
        &[
            "User clicked the country dropdown on the {page} several times but it would not open",
            "The country selector on the {page} did not respond to clicks, so the user could not finish the address form",
            "User rage-clicked the country field on the {page}; the dropdown list never appeared",
        ],
        &["shipping step", "billing address form", "signup page"],
        RAGE | DEAD,
    ),
    p(
        "notification-badge-stuck",
        "Notification badge never clears",
        Recurring,
        &[
            "The notification badge on the {page} still showed unread items after the user opened every notification",
            "User kept opening the notifications panel on the {page} because the red counter never went away",
            "The notification count on the {page} stayed at 3 even after marking all as read; the user clicked Mark all read again and again",
        ],
        &["home dashboard", "inbox", "top navigation"],
        0,
    ),
    p(
        "video-no-sound",
        "Video plays without sound",
        Recurring,
        &[
            "User started a tutorial video on the {page} but there was no audio, and they toggled the mute button back and forth",
            "The embedded video on the {page} played silently; the user checked the volume controls several times",
            "The video on the {page} had no sound even at full volume, so the user closed it",
        ],
        &["help center", "onboarding step", "course page"],
        0,
    ),
    p(
        "address-autocomplete-wrong-fields",
        "Address autocomplete fills wrong fields",
        Recurring,
        &[
            "Address autocomplete on the {page} put the street into the city field, and the user corrected it by hand",
            "User picked an address suggestion on the {page} and the postcode ended up in the wrong field",
            "Autofill on the {page} scrambled the address fields; the user retyped the whole address, looking confused",
        ],
        &["shipping step", "billing address form", "checkout page"],
        0,
    ),
    p(
        "logged-out-while-typing",
        "Users logged out while typing",
        Recurring,
        &[
            "User was writing a long comment on the {page} and was unexpectedly logged out, losing their draft",
            "The session expired without warning on the {page}; the user's draft was lost and they had to sign in again",
            "Unexpected logout on the {page} in the middle of editing; the unsaved work was gone",
        ],
        &["document editor", "ticket page", "comment thread"],
        ERRORS,
    ),
    p(
        "product-tour-loops",
        "Onboarding tour loops",
        Recurring,
        &[
            "The product tour on the {page} restarted every time the user clicked Next on the last step, and they seemed stuck",
            "User tried to dismiss the onboarding tour on the {page}, but it kept reopening, so they clicked Skip repeatedly",
            "Onboarding tooltips on the {page} looped back to step one; the user seemed confused and closed the tab",
        ],
        &["home dashboard", "project setup", "onboarding step"],
        RAGE | EXIT,
    ),
    p(
        "chart-tooltip-wrong",
        "Chart tooltip shows wrong values",
        Recurring,
        &[
            "Hovering over the chart on the {page} showed values that did not match the table below; the user compared them back and forth",
            "The chart tooltips on the {page} displayed numbers from the previous date range, which confused the user",
            "User noticed the graph on the {page} showed different totals than the summary cards and checked them several times",
        ],
        &["analytics dashboard", "revenue report", "metrics overview"],
        0,
    ),
    p(
        "verification-redirect-loop",
        "Email verification link loops to login",
        Recurring,
        &[
            "User clicked the email verification link and landed on the {page}, which redirected back to the login page in a loop",
            "After verifying their email, the user got stuck in a redirect loop between the {page} and sign-in",
            "The verification link opened the {page} and bounced the user to login repeatedly until they gave up",
        ],
        &["welcome page", "signup page", "account page"],
        EXIT,
    ),
    p(
        "attachment-preview-fails",
        "Attachment preview fails to load",
        Recurring,
        &[
            "Opening an attachment preview on the {page} showed 'Preview unavailable' and a broken image icon",
            "User clicked a PDF attachment on the {page}; the preview area stayed grey and never loaded",
            "Attachment previews on the {page} failed to load, so the user downloaded each file instead",
        ],
        &["ticket page", "document library", "message thread"],
        ERRORS,
    ),
    p(
        "pricing-toggle-stale",
        "Annual pricing toggle keeps monthly prices",
        Recurring,
        &[
            "User switched the pricing toggle to annual on the {page}, but the prices stayed monthly; they flipped it back and forth",
            "The annual billing switch on the {page} did not update the plan prices, and the user looked confused",
            "Prices on the {page} did not change when the user selected yearly billing, so they left the page",
        ],
        &["pricing page", "plans page", "upgrade dialog"],
        EXIT,
    ),
    p(
        "report-wrong-hour",
        "Scheduled report sent at the wrong hour",
        Rare,
        &[
            "User checked the scheduled report settings on the {page} because the email arrived at the wrong hour for their time zone",
            "The {page} showed a scheduled send time several hours off from what the user had set, and they looked confused",
        ],
        &["report scheduler", "reports page"],
        0,
    ),
    p(
        "dark-mode-labels",
        "Dark mode makes form labels unreadable",
        Rare,
        &[
            "In dark mode the form labels on the {page} were nearly invisible, and the user zoomed in to read them",
            "User switched to dark mode and could barely read the input labels on the {page}, hovering over each field",
        ],
        &["settings page", "signup page"],
        0,
    ),
    p(
        "bulk-delete-partial",
        "Bulk delete removes only some rows",
        Rare,
        &[
            "User selected 50 rows on the {page} and clicked Delete, but only the first page of rows was removed",
            "Bulk delete on the {page} left most of the selected items in place; the user repeated the action several times",
        ],
        &["events list", "customers table"],
        0,
    ),
    p(
        "shortcut-opens-browser-dialog",
        "Keyboard shortcut opens a browser dialog",
        Rare,
        &[
            "Pressing Ctrl+K on the {page} opened the browser's bookmark dialog instead of the command palette",
            "User tried the command palette shortcut on the {page} several times, but the browser intercepted it",
        ],
        &["document editor", "home dashboard"],
        0,
    ),
    p(
        "language-reverts",
        "Language setting reverts to English",
        Rare,
        &[
            "User changed the language to German on the {page}, but the interface switched back to English after a reload",
            "The language preference on the {page} did not persist, and the user set it again three times",
        ],
        &["account page", "settings page"],
        0,
    ),
    p(
        "calendar-sync-duplicates",
        "Calendar sync creates duplicate events",
        Rare,
        &[
            "After connecting Google Calendar on the {page}, the user saw every meeting duplicated",
            "Calendar sync on the {page} produced duplicate events, and the user deleted the copies one by one",
        ],
        &["integrations page", "calendar view"],
        0,
    ),
    p(
        "heic-upload-crash",
        "App crashes after a HEIC photo upload",
        Crash,
        &[
            "The app crashed to a white screen right after the user uploaded a HEIC photo on the {page}, and the user closed the tab",
        ],
        &["profile settings"],
        ERRORS | EXIT,
    ),
    p(
        "long-note-exception",
        "Pasting a long note throws an exception",
        Crash,
        &[
            "The {page} crashed with an unhandled exception when the user pasted a very long note, and the user left the page",
        ],
        &["ticket page"],
        ERRORS | EXIT,
    ),
    p(
        "gift-card-500",
        "Gift card at checkout returns a 500",
        Crash,
        &[
            "Checkout returned a 500 Internal Server Error after the user applied a gift card on the {page}, and they abandoned the order",
        ],
        &["payment step"],
        ERRORS | EXIT,
    ),
    p(
        "offline-sync-freeze",
        "Mobile app freezes while syncing offline changes",
        Crash,
        &[
            "The mobile app froze completely on the {page} while syncing offline changes, and the user had to force quit",
        ],
        &["task list"],
        EXIT,
    ),
    p(
        "large-table-oom",
        "Large table runs the tab out of memory",
        Crash,
        &[
            "The browser tab ran out of memory and crashed while the user scrolled the {page} with 10,000 rows",
        ],
        &["events list"],
        ERRORS,
    ),
    p(
        "double-charge",
        "Payment charged twice after an error",
        Crash,
        &[
            "The {page} showed an error, the user retried, and the card was charged twice; the user left the site",
        ],
        &["payment step"],
        ERRORS | EXIT,
    ),
];

/// Ordinary activity: what most of a product's sessions look like.
const ORDINARY: &[&str] = &[
    "User browsed the {pricing page|plans page|features page} and scrolled through {the plans|the comparison table|customer logos}",
    "User read a help article about {billing|integrations|API keys|team roles} and {scrolled to the end|followed a link to a related article}",
    "User opened the {analytics dashboard|home dashboard|reports page}, looked at {this week's numbers|the revenue chart|recent activity} and moved on",
    "User edited their {display name|job title|email signature} on the {account page|profile settings} and saved the change",
    "User created a new {project|board|report|folder} named after a {client|campaign|quarter} and added a short description",
    "User filtered the {orders page|customers table|events list} by {date|status|country} and opened a few rows",
    "User watched a product demo video on the {course page|help center} {to the end|for about two minutes}",
    "User invited {a teammate|two colleagues} from {team settings|the invite page} and returned to the dashboard",
    "User added {a pair of sneakers|a winter jacket|two books|a coffee grinder} to the cart and continued shopping",
    "User completed checkout {with a saved card|using PayPal|with Apple Pay} and saw the order confirmation",
    "User switched between {the Overview and Settings tabs|list and grid view|light and dark theme} a couple of times while exploring",
    "User searched for {running shoes|invoice templates|keyboard shortcuts|onboarding guides} and opened the first result",
    "User commented on a {ticket|task|document} and {mentioned a colleague|attached a screenshot}",
    "User signed in {with Google|with email and password|via single sign-on} and landed on the {home dashboard|projects list}",
    "User reviewed {notification preferences|billing details|connected integrations} on the settings page and made no changes",
    "User scrolled through the {changelog|blog|roadmap page} and read {a post about a new feature|several release notes}",
    "User dragged {a card|three tasks} across columns on the {board|kanban view} to update their status",
    "User uploaded {a CSV file|a logo|a spreadsheet} on the {import page|brand settings|data sources page} and it was processed successfully",
    "User compared two {plans|products|reports} side by side and {bookmarked one|shared a link with a colleague}",
    "User renamed a {dashboard|saved view|project} and reordered its {widgets|columns|sections}",
];

/// A stable description of problem `id` (an index of [`generate_with_truth`]'s truth).
pub fn problem_title(id: usize) -> Option<&'static str> {
    CATALOGUE.get(id).map(|p| p.title)
}

/// Number of problems in the catalogue: every problem id is below this.
pub fn catalogue_len() -> usize {
    CATALOGUE.len()
}

/// The problems a generation plants and how many segments each gets, as `(problem id,
/// segments)` in catalogue order. Problems with 0 segments (a tiny `segments`) are left out.
pub fn planned_occurrences(p: &DemoParams) -> Vec<(usize, usize)> {
    let ids = |kind: Kind, max: usize| -> Vec<usize> {
        CATALOGUE
            .iter()
            .enumerate()
            .filter(|(_, q)| q.kind == kind)
            .map(|(i, _)| i)
            .take(max)
            .collect()
    };
    let crashes = ids(Crash, (p.problems / 7).min(CRASHES));
    let rare = ids(Rare, (p.problems / 7).min(RARE));
    let recurring = ids(
        Recurring,
        p.problems.saturating_sub(crashes.len() + rare.len()),
    );
    let noise_share = if p.noise_share.is_finite() {
        p.noise_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut budget = p.segments - (p.segments as f64 * noise_share).round() as usize;
    let mut plan = Vec::new();
    for (list, each) in [(&crashes, 1), (&rare, 2)] {
        for &id in list.iter() {
            if budget >= each {
                plan.push((id, each));
                budget -= each;
            }
        }
    }
    // Recurring: a floor of up to 3 each, the rest by Zipf weights (largest remainder).
    let n = recurring.len();
    if n > 0 && budget > 0 {
        let floor = (budget / n).min(3);
        let rest = budget - floor * n;
        let weights: Vec<f64> = (0..n).map(|k| 1.0 / (k as f64 + 1.0).powf(1.1)).collect();
        let total: f64 = weights.iter().sum();
        let exact: Vec<f64> = weights.iter().map(|w| rest as f64 * w / total).collect();
        let mut counts: Vec<usize> = exact.iter().map(|e| floor + e.floor() as usize).collect();
        let mut left = budget - counts.iter().sum::<usize>();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            let fa = exact[a] - exact[a].floor();
            let fb = exact[b] - exact[b].floor();
            fb.total_cmp(&fa).then(a.cmp(&b))
        });
        for &k in order.iter().cycle().take(n * 2) {
            if left == 0 {
                break;
            }
            counts[k] += 1;
            left -= 1;
        }
        plan.extend(
            recurring
                .iter()
                .zip(counts)
                .filter(|(_, c)| *c > 0)
                .map(|(&id, c)| (id, c)),
        );
    }
    plan.sort_unstable();
    plan
}

/// Demo segments for `p.team_id`, sorted by `(inserted_at, document_id)`.
pub fn generate(p: &DemoParams, now_ms: i64) -> Vec<RawSegment> {
    generate_with_truth(p, now_ms).0
}

/// Demo segments and, for each, the problem id it shows (`None` for ordinary activity). Problem
/// ids index the catalogue: the same problem has the same id and embedding direction in every
/// seed, so several generations can play successive batches.
pub fn generate_with_truth(p: &DemoParams, now_ms: i64) -> (Vec<RawSegment>, Vec<Option<usize>>) {
    if p.problems > CATALOGUE.len() {
        tracing::warn!(
            requested = p.problems,
            available = CATALOGUE.len(),
            "the demo catalogue has fewer problems than requested; using all of them"
        );
    }
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x5e9c_1a55_d3e0_0001);
    let plan = planned_occurrences(p);
    let mut slots: Vec<Option<usize>> = plan
        .iter()
        .flat_map(|&(id, n)| std::iter::repeat_n(Some(id), n))
        .collect();
    slots.resize(p.segments.max(slots.len()), None);
    slots.shuffle(&mut rng);

    let users = p.users.max(1);
    let user_ids: Vec<String> = (0..users)
        .map(|i| format!("user-{:016x}", mix(p.team_id as u64, i as u64)))
        .collect();
    let audiences: HashMap<usize, Vec<usize>> = plan
        .iter()
        .map(|&(id, _)| {
            let mut all: Vec<usize> = (0..users).collect();
            all.shuffle(&mut rng);
            let share = rng.random_range(0.1..=1.0);
            all.truncate(((users as f64 * share) as usize).max(2.min(users)));
            (id, all)
        })
        .collect();

    let span_ms = (p.days.max(1) as i64 * MS_PER_DAY - MS_PER_HOUR).max(1);
    let mut sessions: Vec<Session> = Vec::new();
    let mut last_session_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut users_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut placed: Vec<Placed> = Vec::with_capacity(slots.len());
    for &problem in &slots {
        // Rare problems stay in two sessions of two users; sessions stay under half an hour.
        let reuse = match problem {
            Some(id) if CATALOGUE[id].kind == Recurring => last_session_of
                .get(&id)
                .filter(|_| rng.random_bool(SAME_SESSION_REPEAT))
                .map(|v| v[rng.random_range(0..v.len())]),
            Some(_) => None,
            None => (!sessions.is_empty() && rng.random_bool(ORDINARY_IN_EXISTING_SESSION))
                .then(|| rng.random_range(0..sessions.len())),
        }
        .filter(|&s| sessions[s].next_offset_s < MAX_SESSION_OFFSET_S);
        let s = match reuse {
            Some(s) => s,
            None => {
                let user = match problem {
                    Some(id) => pick_user(&audiences[&id], users_of.get(&id), &mut rng),
                    None => rng.random_range(0..users),
                };
                let start_ms = now_ms - MS_PER_HOUR - rng.random_range(0..span_ms);
                sessions.push(Session {
                    id: uuid7(start_ms, &mut rng),
                    user,
                    start_ms,
                    next_offset_s: rng.random_range(0..120),
                });
                sessions.len() - 1
            }
        };
        if let Some(id) = problem {
            last_session_of.entry(id).or_default().push(s);
            users_of.entry(id).or_default().push(sessions[s].user);
        }
        let session = &mut sessions[s];
        let start_s = session.next_offset_s + rng.random_range(0..20);
        let end_s = start_s + rng.random_range(15..=90);
        session.next_offset_s = end_s;
        let (content, topic) = match problem {
            Some(id) => {
                let q = &CATALOGUE[id];
                let t = q.templates[rng.random_range(0..q.templates.len())];
                (expand(t, q.pages, &mut rng), Topic::Problem(id))
            }
            None => {
                let a = rng.random_range(0..ORDINARY.len());
                (expand(ORDINARY[a], &[], &mut rng), Topic::Activity(a))
            }
        };
        let signals = problem.map_or(0, |id| CATALOGUE[id].signals);
        let mut extra = serde_json::Map::new();
        for (flag, field) in [
            (ERRORS, "error_count"),
            (RAGE, "rage_clicks"),
            (DEAD, "dead_clicks"),
        ] {
            if signals & flag != 0 && rng.random_bool(0.5) {
                extra.insert(field.into(), rng.random_range(1..=8).into());
            }
        }
        if signals & EXIT != 0 && rng.random_bool(0.5) {
            extra.insert("exited".into(), true.into());
        }
        placed.push(Placed {
            session: s,
            start_s,
            end_s,
            problem,
            topic,
            content,
            extra,
            delay_ms: rng.random_range(60_000..1_800_000),
        });
    }

    let latents: HashMap<Topic, Vec<f32>> = plan
        .iter()
        .map(|&(id, _)| Topic::Problem(id))
        .chain((0..ORDINARY.len()).map(Topic::Activity))
        .map(|t| (t, unit_gaussian(p.dim, &mut seeded(t.hash()))))
        .collect();
    let mut rows: Vec<(RawSegment, Option<usize>)> = placed
        .into_par_iter()
        .enumerate()
        .map(|(i, seg)| {
            let session = &sessions[seg.session];
            let end_ms = session.start_ms + i64::from(session.next_offset_s + 30) * 1000;
            let mut rng = seeded(mix(p.seed, i as u64));
            let embedding = embed(&seg.content, &latents[&seg.topic], MIX, p.dim, &mut rng);
            let (start, end) = (hms(seg.start_s), hms(seg.end_s));
            let mut meta = serde_json::Map::new();
            meta.insert("session_id".into(), session.id.clone().into());
            meta.insert("distinct_id".into(), user_ids[session.user].clone().into());
            meta.insert("start_time".into(), start.clone().into());
            meta.insert("end_time".into(), end.clone().into());
            meta.insert("session_start_time".into(), iso(session.start_ms).into());
            meta.insert("session_end_time".into(), iso(end_ms).into());
            meta.extend(seg.extra);
            let timestamp_ms = session.start_ms + i64::from(seg.start_s) * 1000;
            let raw = RawSegment {
                team_id: p.team_id,
                document_id: format!("{}:{start}:{end}", session.id),
                content: seg.content,
                metadata: serde_json::Value::Object(meta).to_string(),
                timestamp_ms,
                inserted_at_ms: (end_ms + seg.delay_ms).min(now_ms).max(timestamp_ms),
                embedding,
            };
            (raw, seg.problem)
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.0.inserted_at_ms, &a.0.document_id).cmp(&(b.0.inserted_at_ms, &b.0.document_id))
    });
    rows.into_iter().unzip()
}

struct Session {
    id: String,
    user: usize,
    start_ms: i64,
    /// End of the last segment so far, in seconds from the session start.
    next_offset_s: u32,
}

/// What a segment is about: one latent direction each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Topic {
    Problem(usize),
    /// An [`ORDINARY`] template.
    Activity(usize),
}

impl Topic {
    /// Seed of the latent direction: from the problem's key, so it is stable across catalogue
    /// edits and seeds.
    fn hash(self) -> u64 {
        match self {
            Topic::Problem(id) => hash_str(CATALOGUE[id].key),
            Topic::Activity(a) => hash_str(&format!("ordinary:{}", ORDINARY[a])),
        }
    }
}

struct Placed {
    session: usize,
    start_s: u32,
    end_s: u32,
    problem: Option<usize>,
    topic: Topic,
    content: String,
    extra: serde_json::Map<String, serde_json::Value>,
    delay_ms: i64,
}

/// A user from the problem's audience, skewed to its first members; a problem's second
/// occurrence comes from another user when the audience allows (rare problems are "2 users").
fn pick_user(audience: &[usize], earlier: Option<&Vec<usize>>, rng: &mut StdRng) -> usize {
    let draw = |rng: &mut StdRng| {
        let u: f64 = rng.random();
        audience[((u * u * audience.len() as f64) as usize).min(audience.len() - 1)]
    };
    let first = draw(rng);
    match earlier {
        Some(e) if e.len() == 1 && e[0] == first && audience.len() > 1 => audience
            .iter()
            .copied()
            .find(|&x| x != first)
            .unwrap_or(first),
        _ => first,
    }
}

/// Fills `{page}` from `pages` and each `{a|b|c}` with one alternative.
fn expand(template: &str, pages: &[&str], rng: &mut StdRng) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &rest[open + 1..open + close];
        let alts: Vec<&str> = if inner == "page" {
            pages.to_vec()
        } else {
            inner.split('|').collect()
        };
        if !alts.is_empty() {
            out.push_str(alts[rng.random_range(0..alts.len())]);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "to", "of", "on", "in", "at", "by", "for", "with",
    "from", "it", "its", "they", "their", "them", "was", "were", "is", "be", "had", "has", "user",
    "users", "then", "so", "that", "this", "after", "when",
];

/// `normalize(parts[0] * latent + parts[1] * bag_of_words(text) + parts[2] * gaussian)`.
fn embed(text: &str, latent: &[f32], parts: [f32; 3], dim: usize, rng: &mut StdRng) -> Vec<f32> {
    if dim == 0 {
        return Vec::new();
    }
    let mut bow = vec![0.0f32; dim];
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    for (i, w) in words.iter().enumerate() {
        let weight = if STOP_WORDS.contains(&w.as_str()) {
            STOP_WEIGHT
        } else {
            1.0
        };
        add_token(&mut bow, hash_str(w), weight);
        if let Some(next) = words.get(i + 1) {
            add_token(
                &mut bow,
                mix(hash_str(w), hash_str(next)),
                BIGRAM_WEIGHT * weight,
            );
        }
    }
    normalize(&mut bow);
    let noise = unit_gaussian(dim, rng);
    let mut v: Vec<f32> = (0..dim)
        .map(|j| parts[0] * latent[j] + parts[1] * bow[j] + parts[2] * noise[j])
        .collect();
    normalize(&mut v);
    v
}

/// Adds `weight` times the token's sparse +-1/sqrt(nnz) vector.
fn add_token(v: &mut [f32], token_hash: u64, weight: f32) {
    let scale = weight / (TOKEN_NNZ as f32).sqrt();
    let mut h = token_hash;
    for _ in 0..TOKEN_NNZ {
        h = splitmix(h);
        let idx = (h >> 1) as usize % v.len();
        v[idx] += if h & 1 == 0 { scale } else { -scale };
    }
}

fn unit_gaussian(dim: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| StandardNormal.sample(rng)).collect();
    normalize(&mut v);
    v
}

fn seeded(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix(a: u64, b: u64) -> u64 {
    splitmix(splitmix(a) ^ b.rotate_left(17))
}

/// FNV-1a, then mixed: a fixed, platform-independent hash of a token.
fn hash_str(s: &str) -> u64 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    splitmix(h)
}

/// A UUIDv7-shaped id: 48 bits of milliseconds, version 7, variant bits, random rest.
fn uuid7(ms: i64, rng: &mut StdRng) -> String {
    let t = (ms.max(0) as u64) & 0xffff_ffff_ffff;
    let r: u64 = rng.random();
    let r2: u16 = rng.random();
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        t >> 16,
        t & 0xffff,
        r2 & 0x0fff,
        0x8000 | ((r >> 48) as u16 & 0x3fff),
        r & 0xffff_ffff_ffff
    )
}

fn hms(s: u32) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impact::{ImpactWeights, impact};
    use crate::matrix::cosine_distance_unit;
    use std::collections::HashSet;

    const NOW: i64 = 1_750_000_000_000;

    fn small() -> DemoParams {
        DemoParams {
            segments: 600,
            ..DemoParams::default()
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let p = small();
        let a = generate_with_truth(&p, NOW);
        assert_eq!(a, generate_with_truth(&p, NOW));
        let b = generate(&DemoParams { seed: 7, ..p }, NOW);
        assert_ne!(a.0, b);
        let ids_a: HashSet<_> = a.0.iter().map(|s| &s.document_id).collect();
        assert!(
            b.iter().all(|s| !ids_a.contains(&s.document_id)),
            "seeds give new sessions"
        );
    }

    #[test]
    fn shapes_ids_order_and_metadata() {
        let p = small();
        let (rows, truth) = generate_with_truth(&p, NOW);
        assert_eq!(rows.len(), p.segments);
        assert_eq!(truth.len(), p.segments);
        let ids: HashSet<_> = rows.iter().map(|r| r.document_id.as_str()).collect();
        assert_eq!(ids.len(), rows.len(), "document ids are unique");
        for w in rows.windows(2) {
            assert!(
                (w[0].inserted_at_ms, &w[0].document_id) < (w[1].inserted_at_ms, &w[1].document_id)
            );
        }
        let earliest = NOW - p.days as i64 * MS_PER_DAY;
        let mut sessions = HashSet::new();
        let mut users = HashSet::new();
        for r in &rows {
            assert_eq!(r.team_id, p.team_id);
            assert_eq!(r.embedding.len(), p.dim);
            let norm: f64 = r
                .embedding
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum();
            assert!((norm - 1.0).abs() < 1e-4);
            assert!(r.timestamp_ms >= earliest && r.timestamp_ms <= r.inserted_at_ms);
            assert!(r.inserted_at_ms <= NOW);
            let m: serde_json::Value = serde_json::from_str(&r.metadata).unwrap();
            let sid = m["session_id"].as_str().unwrap();
            let want = format!(
                "{sid}:{}:{}",
                m["start_time"].as_str().unwrap(),
                m["end_time"].as_str().unwrap()
            );
            assert_eq!(r.document_id, want);
            for key in ["distinct_id", "session_start_time", "session_end_time"] {
                assert!(m[key].is_string(), "{key} in {m}");
            }
            assert!(m["session_start_time"].as_str() < m["session_end_time"].as_str());
            sessions.insert(sid.to_string());
            users.insert(m["distinct_id"].as_str().unwrap().to_string());
        }
        assert!(users.len() < sessions.len() && sessions.len() < rows.len());
        assert!(users.len() <= p.users);
    }

    #[test]
    fn plan_matches_the_module_doc() {
        let p = DemoParams::default();
        let plan = planned_occurrences(&p);
        let kind = |id: usize| CATALOGUE[id].kind;
        let count = |k: Kind| plan.iter().filter(|(id, _)| kind(*id) == k).count();
        assert_eq!((count(Recurring), count(Rare), count(Crash)), (22, 4, 4));
        assert!(plan.iter().all(|&(id, n)| match kind(id) {
            Crash => n == 1,
            Rare => n == 2,
            Recurring => n >= 3,
        }));
        let total: usize = plan.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 2250);
        let most = plan.iter().map(|(_, n)| *n).max().unwrap();
        assert!((500..=700).contains(&most), "{most}");
        let (_, truth) = generate_with_truth(&p, NOW);
        for &(id, n) in &plan {
            assert_eq!(truth.iter().filter(|t| **t == Some(id)).count(), n);
        }
        // Tiny budgets never panic and never exceed the requested size.
        for segments in [0, 1, 5, 40] {
            let q = DemoParams {
                segments,
                ..DemoParams::default()
            };
            assert!(
                planned_occurrences(&q)
                    .iter()
                    .map(|(_, n)| n)
                    .sum::<usize>()
                    <= segments
            );
            assert_eq!(generate(&q, NOW).len(), segments);
        }
    }

    #[test]
    fn catalogue_is_consistent() {
        assert_eq!(
            CATALOGUE.iter().filter(|p| p.kind == Recurring).count(),
            RECURRING
        );
        assert_eq!(CATALOGUE.iter().filter(|p| p.kind == Rare).count(), RARE);
        assert_eq!(
            CATALOGUE.iter().filter(|p| p.kind == Crash).count(),
            CRASHES
        );
        let keys: HashSet<_> = CATALOGUE.iter().map(|p| p.key).collect();
        assert_eq!(keys.len(), CATALOGUE.len());
        let mut rng = seeded(1);
        for q in CATALOGUE {
            for t in q.templates {
                let s = expand(t, q.pages, &mut rng);
                assert!(!s.contains(['{', '}']), "{s}");
            }
        }
        assert_eq!(problem_title(3), Some("CSV export times out with 504"));
        assert_eq!(problem_title(catalogue_len()), None);
    }

    #[test]
    fn crashes_are_high_impact_and_ordinary_rows_are_not() {
        let w = ImpactWeights::default();
        let mut rng = seeded(3);
        for q in CATALOGUE.iter().filter(|q| q.kind == Crash) {
            for t in q.templates {
                let i = impact(&expand(t, q.pages, &mut rng), &serde_json::json!({}), &w);
                assert!(i.score > 0.3, "{t}: {i:?}");
            }
        }
        for t in ORDINARY {
            for _ in 0..5 {
                let s = expand(t, &[], &mut rng);
                assert_eq!(impact(&s, &serde_json::json!({}), &w).score, 0.0, "{s}");
            }
        }
    }

    #[test]
    fn same_problem_is_close_different_problems_are_far() {
        let (rows, truth) = generate_with_truth(&small(), NOW);
        let (mut same, mut cross, mut ordinary) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rows.len() {
            for j in i + 1..rows.len() {
                let d = cosine_distance_unit(&rows[i].embedding, &rows[j].embedding);
                match (truth[i], truth[j]) {
                    (Some(a), Some(b)) if a == b => same.push(d),
                    (Some(_), Some(_)) => cross.push(d),
                    (None, None) => {}
                    _ => ordinary.push(d),
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        assert!(mean(&same) < 0.25, "same-problem mean {}", mean(&same));
        assert!(max(&same) < 0.3, "same-problem max {}", max(&same));
        assert!(mean(&cross) > 0.8, "cross-problem mean {}", mean(&cross));
        assert!(min(&cross) > 0.5, "cross-problem min {}", min(&cross));
        assert!(
            min(&ordinary) > 0.5,
            "ordinary rows are far from every problem: min {}",
            min(&ordinary)
        );
    }

    #[test]
    fn paraphrases_share_words_so_bag_of_words_matters() {
        let mut rng = seeded(9);
        let zero = vec![0.0f32; 256];
        let a = embed(
            "the export timed out",
            &zero,
            [0.0, 1.0, 0.0],
            256,
            &mut rng,
        );
        let b = embed(
            "the export timed out again",
            &zero,
            [0.0, 1.0, 0.0],
            256,
            &mut rng,
        );
        let c = embed(
            "user renamed a dashboard",
            &zero,
            [0.0, 1.0, 0.0],
            256,
            &mut rng,
        );
        assert!(cosine_distance_unit(&a, &b) < cosine_distance_unit(&a, &c));
    }

    #[test]
    fn generation_is_fast() {
        let t = std::time::Instant::now();
        let rows = generate(&DemoParams::default(), NOW);
        let took = t.elapsed();
        assert_eq!(rows.len(), 3000);
        // Generous for a loaded 2-core CI machine; typically well under a second.
        assert!(took.as_secs_f64() < 5.0, "{took:?}");
    }
}

/// What the numeric core makes of the demo: the tuning target of the embedding construction.
#[cfg(test)]
mod pipeline_tests {
    use super::*;
    use crate::cluster::{HdbscanParams, hdbscan_cpu};
    use crate::matrix::{Matrix, cosine_distance_unit};
    use crate::reduce::{PcaParams, pca_cpu};
    use std::collections::{BTreeMap, HashSet};

    fn centroid(rows: &[RawSegment], members: &[usize], dim: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; dim];
        for &i in members {
            c.iter_mut()
                .zip(&rows[i].embedding)
                .for_each(|(c, v)| *c += v);
        }
        normalize(&mut c);
        c
    }

    #[test]
    fn pca_and_hdbscan_find_the_planted_problems() {
        let p = DemoParams::default();
        let (rows, truth) = generate_with_truth(&p, 1_750_000_000_000);
        let data: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.embedding.iter().copied())
            .collect();
        let x = Matrix::new(rows.len(), p.dim, data).unwrap();
        let pca = pca_cpu(&x, &PcaParams::default()).unwrap();
        let labels = hdbscan_cpu(&pca.projected, &HdbscanParams::default())
            .unwrap()
            .labels;

        let mut members: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &l) in labels.iter().enumerate().filter(|(_, l)| **l >= 0) {
            members.entry(l).or_default().push(i);
        }
        let recurs = |t: Option<usize>| t.is_some_and(|id| CATALOGUE[id].kind != Crash);
        // No cluster mixes a recurring problem with anything else, and problem clusters are
        // tight in the original space.
        for m in members.values() {
            let kinds: HashSet<Option<usize>> = m.iter().map(|&i| truth[i]).collect();
            if kinds.iter().any(|&t| recurs(t)) {
                assert_eq!(kinds.len(), 1, "mixed cluster {kinds:?}");
                let c = centroid(&rows, m, p.dim);
                for &i in m {
                    assert!(cosine_distance_unit(&c, &rows[i].embedding) < 0.15);
                }
            }
        }
        // Stand-in for the Task stage: clusters whose centroids are within 0.3 merge.
        let mut tasks: Vec<(Vec<f32>, HashSet<Option<usize>>)> = Vec::new();
        for m in members.values() {
            let c = centroid(&rows, m, p.dim);
            let kinds = m.iter().map(|&i| truth[i]);
            match tasks
                .iter()
                .position(|(t, _)| cosine_distance_unit(t, &c) < 0.3)
            {
                Some(k) => tasks[k].1.extend(kinds),
                None => tasks.push((c, kinds.collect())),
            }
        }
        for (id, n) in planned_occurrences(&p) {
            if n < 2 {
                continue;
            }
            let holding = tasks.iter().filter(|t| t.1.contains(&Some(id))).count();
            assert_eq!(holding, 1, "problem {id} ends in {holding} Tasks");
            let clustered = (0..rows.len())
                .filter(|&i| truth[i] == Some(id) && labels[i] >= 0)
                .count();
            assert!(
                clustered * 2 >= n,
                "problem {id}: {clustered} of {n} clustered"
            );
        }
    }
}
