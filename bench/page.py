"""The page's predictive typing measured in a real browser: keystroke-to-suggestion latency and keystrokes saved.

Starts `rnnlm serve` twice on a free loopback port, with the recurrent-state cache on (the default) and
off (RNNLM_STATE_CACHE_MB=0, the baseline), and drives the page at `/` in headless Chromium (Playwright,
the system's browser). For each model it types a 300-character paragraph of WikiText-2 test one key at a
time, waiting for the suggestions of each keystroke: the latency is the page's own measure, from the
input event to the suggestions drawn under the cursor (the page's 25 ms debounce included). Then it types
the paragraph again as a person would with the top-3 suggestions: a click on the word when it is offered,
else the next key; the page counts the keystrokes saved.

    python bench/page.py --checkpoints checkpoints --models lstm,student
"""
from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path

from benchlib import model_parser
from load import server
from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONFIGS = {"cache": {}, "no cache": {"RNNLM_STATE_CACHE_MB": "0"}}


def paragraph(data: Path, chars: int) -> str:
    """The first WikiText-2 test paragraph of at least `chars` characters and no `<unk>` in them, cut to
    `chars` at a word end; WikiText's number and hyphen splits (`@-@`) are joined back as a person types."""
    for line in (data / "test.txt").read_text(encoding="utf-8").splitlines():
        line = re.sub(r" @(.)@ ", r"\1", line.strip())
        cut = line[:line.rfind(" ", 0, chars + 1)]
        if line and not line.startswith("=") and len(line) > chars and "<unk>" not in cut:
            return cut
    raise SystemExit(f"no paragraph of {chars} characters in {data / 'test.txt'}")


def open_page(browser, url: str, model: str, k: int) -> Page:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url)
    page.wait_for_selector(f'#model option[value="{model}"]', state="attached")
    page.select_option("#model", model)
    page.fill("#k", str(k))
    page.click("#editor")
    return page


def wait_suggestions(page: Page, text: str) -> list[str]:
    """The words offered for `text` once the page has drawn them."""
    page.wait_for_function("t => document.getElementById('suggestions').dataset.for === t", arg=text)
    return page.eval_on_selector_all("#suggestions li", "items => items.map(li => li.dataset.word)")


def latencies(page: Page, text: str) -> list[float]:
    """Type `text` key by key, waiting for each keystroke's suggestions; the page's latencies in ms."""
    page.evaluate("performance.clearMeasures('suggestion')")
    for i, ch in enumerate(text):
        page.keyboard.type(ch)
        wait_suggestions(page, text[:i + 1])
    measured = page.evaluate("performance.getEntriesByName('suggestion').map(e => [e.detail.text, e.duration])")
    by_text = dict(measured)  # the last answer drawn for each text (one per keystroke)
    return [by_text[text[:i + 1]] for i in range(len(text))]


def keystrokes_saved(page: Page, text: str) -> tuple[int, int]:
    """Type `text` taking an offered word whenever it is the next word: (keystrokes pressed, saved)."""
    page.click("#clear-editor")
    words, typed = text.split(" "), ""
    for word in words:
        done = 0
        while done < len(word):
            offered = wait_suggestions(page, typed) if typed.strip() else []
            if word in offered:
                page.locator("#suggestions li").nth(offered.index(word)).click()
                typed += word[done:] + " "
                break
            page.keyboard.type(word[done])
            typed += word[done]
            done += 1
        else:
            page.keyboard.type(" ")
            typed += " "
        assert page.input_value("#editor") == typed, (page.input_value("#editor"), typed)
    pressed = int(page.inner_text("#typed"))
    saved = int(page.get_attribute("#saved", "data-count"))
    return pressed, saved


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def main() -> None:
    parser = model_parser(__doc__, threads_help="torch threads of the server")
    parser.add_argument("--models", default="lstm,student", help="comma-separated models to type with")
    parser.add_argument("--chars", type=int, default=300, help="keystrokes of the typed paragraph")
    parser.add_argument("-k", type=int, default=3, help="suggestions shown")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    models = args.models.split(",")
    text = paragraph(Path(args.data), args.chars)
    print(f"paragraph: {len(text)} characters of WikiText-2 test: {text[:60]!r}...; top-{args.k} suggestions; "
          f"server threads {args.threads}")
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        for config, env in CONFIGS.items():
            with server(args.checkpoints, models[0], env, args.threads) as (url, _pid):
                for model in models:
                    page = open_page(browser, f"{url}/", model, args.k)
                    page.keyboard.type("x")  # warm-up keystroke, then a fresh editor
                    wait_suggestions(page, "x")
                    page.click("#clear-editor")
                    ms = latencies(page, text)
                    pressed, saved = keystrokes_saved(page, text) if config == "cache" else (0, 0)
                    rows.append((model, config, ms, pressed, saved))
                    page.close()
        browser.close()
    print(f"{'model':>8} {'server':>9} {'p50 ms':>7} {'p99 ms':>7} {'first 50':>9} {'last 50':>8}   keystrokes saved")
    for model, config, ms, pressed, saved in rows:
        savings = f"{saved} of {pressed + saved} ({100 * saved / (pressed + saved):.1f} %)" if pressed else ""
        print(f"{model:>8} {config:>9} {statistics.median(ms):7.1f} {pct(ms, 99):7.1f} "
              f"{statistics.median(ms[:50]):9.1f} {statistics.median(ms[-50:]):8.1f}   {savings}".rstrip())
    for model in models:
        (cached,), (plain,) = ([r[2] for r in rows if r[0] == model and r[1] == c] for c in CONFIGS)
        print(f"{model}: with the state cache, p50 {statistics.median(cached) / statistics.median(plain):.2f}x and "
              f"last-50 p50 {statistics.median(cached[-50:]) / statistics.median(plain[-50:]):.2f}x the latency "
              "without it")


if __name__ == "__main__":
    main()
