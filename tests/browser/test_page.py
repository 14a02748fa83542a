"""The page at `/` in a real browser against a real server: typing, ranking, generation, jobs, errors."""
from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

TINY_JOB = {"job-name": "page-tiny", "job-epochs": "1", "job-emb": "16", "job-hidden": "16", "job-layers": "1",
            "job-train-tokens": "5000"}


def ready(run, url: str):
    """Open `url` and wait until the model picker is filled from GET /v1/models."""
    page = run.page
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator("#server-status")).to_have_text("server connected")
    return page


def test_typing_completes_a_word_and_tab_accepts_it(server, open_page, artifacts):
    run = open_page(f"{server.url}/")
    page = ready(run, server.url)
    expect(page.locator("#model")).to_have_value("lstm")
    editor = page.locator("#editor")
    editor.click()
    editor.press_sequentially("The album was rel", delay=40)
    offered = page.locator('#suggestions[data-for="The album was rel"] li[data-word="released"]')
    expect(offered).to_be_visible()
    expect(page.locator("#suggestions li").first).to_have_attribute("aria-selected", "true")
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+ ms$"))
    page.screenshot(path=artifacts / "page-type.png")

    # Tab takes the highlighted suggestion (the first, unless the arrows moved it)
    words = page.locator("#suggestions li").evaluate_all("items => items.map(li => li.dataset.word)")
    index = words.index("released")
    for _ in range(index):
        editor.press("ArrowDown")
    expect(page.locator("#suggestions li").nth(index)).to_have_attribute("aria-selected", "true")
    editor.press("Tab")
    expect(editor).to_have_value("The album was released ")
    expect(editor).to_be_focused()
    # 'eased ' came from one keystroke
    expect(page.locator("#saved")).to_have_attribute("data-count", "5")
    # and the next word is offered for the new text
    expect(page.locator('#suggestions[data-for="The album was released "] li').first).to_be_visible()
    editor.press("Escape")
    expect(page.locator("#suggestions")).to_be_hidden()

    # after punctuation the next word is offered, and goes after a space
    editor.press_sequentially("in Japan,", delay=20)
    expect(page.locator('#suggestions[data-for="The album was released in Japan,"] li').first).to_be_visible()
    editor.press("Tab")
    expect(editor).to_have_value(re.compile(r"^The album was released in Japan, \S+ $"))


def test_switching_the_model_changes_the_suggestions(server, open_page):
    text = "He was born in Lon"
    expected = {m: [p["word"] for p in httpx.post(f"{server.url}/v1/next-word",
                                                    json={"text": text, "k": 3, "model": m}).json()["predictions"]]
                for m in ("lstm", "gru")}
    run = open_page(f"{server.url}/")
    page = ready(run, server.url)
    page.locator("#model").select_option("gru")
    expect(page.locator("#model-info")).to_contain_text("GRU 2×256")
    editor = page.locator("#editor")
    editor.click()
    editor.press_sequentially(text, delay=20)
    shown = page.locator(f'#suggestions[data-for="{text}"] li')
    expect(shown).to_have_count(3)
    assert shown.evaluate_all("items => items.map(li => li.dataset.word)") == expected["gru"]
    assert "London" in expected["gru"]


def test_ranking_puts_the_grammatical_sentence_first(server, open_page, artifacts):
    run = open_page(f"{server.url}/")
    page = ready(run, server.url)
    page.get_by_role("tab", name="Which is more likely?").click()
    page.locator("#rank-input").fill("The album were release in 1999 .\nThe album was released in 1999 .")
    page.get_by_role("button", name="Rank").click()
    items = page.locator("#rank-results > li")
    expect(items).to_have_count(2)
    expect(items.first.locator(".sentence")).to_have_text("The album was released in 1999 .")
    expect(items.first.locator(".rank")).to_have_text("#1")
    # per-word log-probabilities, coloured by surprise: 7 words and the end of sentence
    tokens = items.first.locator(".token")
    expect(tokens).to_have_count(8)
    expect(tokens.first).to_have_attribute("title", re.compile(r"^The: log p = -\d+\.\d\d$"))
    classes = tokens.evaluate_all("spans => spans.map(s => s.className)")
    assert all(re.fullmatch(r"token s[0-6]", c) for c in classes), classes
    page.screenshot(path=artifacts / "page-rank.png")


def test_generation_streams_and_stops(server, open_page, artifacts):
    run = open_page(f"{server.url}/#generate")
    page = ready(run, server.url)
    expect(page.get_by_role("tab", name="Generate")).to_have_attribute("aria-selected", "true")
    page.locator("#gen-max").fill("5")
    page.locator("#gen-seed").fill("7")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done", timeout=30_000)
    expect(page.locator("#gen-status")).to_contain_text("5 tokens")
    expect(page.locator("#gen-output .generated")).not_to_be_empty()

    # A long generation (seed 12 runs 227 tokens before <eos>) over a slow link, so Stop comes mid-stream
    # however fast the server is.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": 2000, "uploadThroughput": -1})
    page.locator("#gen-max").fill("5000")
    page.locator("#gen-seed").fill("12")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gen-stop")).to_be_enabled()
    expect(page.locator("#gen-status")).to_have_text(re.compile(r"generating… ([3-9]|\d\d+) tokens"))
    page.screenshot(path=artifacts / "page-generate.png")
    page.get_by_role("button", name="Stop").click()
    status = page.locator("#gen-status")
    expect(status).to_have_attribute("data-state", "stopped")
    stopped_at = int(re.search(r"(\d+) tokens", status.inner_text()).group(1))
    assert stopped_at < 5000
    expect(page.locator("#gen-stop")).to_be_disabled()
    expect(page.locator("#gen-start")).to_be_focused()
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    # a limit the server enforces comes back as its message
    page.locator("#gen-max").fill("5001")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gen-error")).to_have_text(re.compile(r"^max_tokens\b.*\b5000\b"))


def test_a_submitted_job_trains_and_its_model_joins_the_picker(server, data_root, open_page, artifacts):
    run = open_page(f"{server.url}/#train")
    page = ready(run, server.url)
    expect(page.locator("#jobs-note")).to_have_text("No jobs yet.")
    for field, value in TINY_JOB.items():
        page.locator(f"#{field}").fill(value)
    page.locator("#job-data").fill(str(data_root.parent / "elsewhere"))
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#job-error")).to_contain_text("outside the allowed data roots")  # the server's message

    page.locator("#job-data").fill(str(data_root / "wt2-400"))
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#job-error")).to_be_hidden()
    job = page.locator('#jobs li[data-status]', has_text="page-tiny")
    expect(job).to_have_count(1)
    expect(job).to_have_attribute("data-status", "succeeded", timeout=150_000)
    bar = job.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(job.locator(".job-text")).to_contain_text("epoch 1/1")
    expect(job.locator(".chart circle")).not_to_have_count(0)
    page.screenshot(path=artifacts / "page-train.png")
    # the finished model is served and offered in the picker
    expect(page.locator('#model option[value="page-tiny"]')).to_have_count(1, timeout=30_000)
    job.get_by_role("button", name="Use model page-tiny").click()
    expect(page.locator("#model")).to_have_value("page-tiny")
    expect(page.get_by_role("tab", name="Type")).to_be_focused()

    # a long job, cancelled from its Cancel button (queued: at once; running: at its next step)
    page.get_by_role("tab", name="Train").click()
    page.locator("#job-name").fill("page-long")
    page.locator("#job-epochs").fill("1000")
    page.locator("#job-train-tokens").fill("")
    page.get_by_role("button", name="Submit job").click()
    long_job = page.locator('#jobs li[data-status]', has_text="page-long")
    long_job.get_by_role("button", name="Cancel job page-long").click()
    expect(long_job).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(long_job.get_by_role("button")).to_have_count(0)


def test_keyboard_only_and_phone_width(server, open_page, artifacts):
    run = open_page(f"{server.url}/", width=390, height=844)
    page = ready(run, server.url)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("tab", name="Type").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Which is more likely?")).to_be_focused()
    expect(page.get_by_role("tabpanel", name="Which is more likely?")).to_be_visible()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Train")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(page.get_by_role("tab", name="Type")).to_have_attribute("aria-selected", "true")
    # from the tab into the editor and through a suggestion with keys alone
    page.keyboard.press("Tab")
    expect(page.locator("#editor")).to_be_focused()
    page.keyboard.type("The first season of the", delay=20)
    page.keyboard.press("Space")
    expect(page.locator('#suggestions[data-for="The first season of the "] li').first).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator("#editor")).to_have_value(re.compile(r"^The first season of the \S+ $"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=artifacts / "page-phone.png", full_page=True)


def test_errors_from_the_server_and_a_stopped_server_are_shown(launch, proc_tools, open_page, data_root):
    own = launch(models=("student",), max_text_chars="30", api_key="page-key", data_root=data_root)
    run = open_page(f"{own.url}/#train")
    page = ready(run, own.url)
    # jobs need the key: the page says so, and a wrong key gets the server's 401 message
    expect(page.locator("#jobs-note")).to_contain_text("needs an API key")
    page.locator("#job-data").fill(str(data_root / "wt2-400"))
    page.locator("#job-key").fill("wrong")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#job-error")).to_contain_text("API key")
    page.locator("#job-key").fill("page-key")
    expect(page.locator("#jobs-note")).to_have_text("No jobs yet.")

    page.get_by_role("tab", name="Type").click()
    editor = page.locator("#editor")
    editor.click()
    editor.press_sequentially("The song was a hit in", delay=20)
    expect(page.locator('#suggestions[data-for="The song was a hit in"] li').first).to_be_visible()
    editor.press_sequentially(" the United States", delay=20)  # over the server's limit: its 422 message
    expect(page.locator("#type-error")).to_have_text(re.compile(r"^text: \d+ characters, the limit is 30$"))
    expect(page.locator("#suggestions")).to_be_hidden()

    proc_tools.stop(own.proc)
    editor.fill("")
    editor.press_sequentially("It was", delay=20)
    expect(page.locator("#type-error")).to_contain_text("Cannot reach the server")
    expect(page.locator("#server-status")).to_have_text("cannot reach the server")
    page.get_by_role("tab", name="Which is more likely?").click()
    page.get_by_role("button", name="Rank").click()
    expect(page.locator("#rank-error")).to_contain_text("Cannot reach the server")


def test_api_docs_render_offline(server, open_page, artifacts):
    run = open_page(f"{server.url}/docs")
    page = run.page
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/v1/next-word")).to_have_count(1)
    assert operations.count() >= 10
    assert run.off_host(server.url) == [] and run.blocked == []
    page.screenshot(path=artifacts / "docs.png")
    run = open_page(f"{server.url}/redoc")
    expect(run.page.get_by_role("heading", name=re.compile("rnnlm-serve"))).to_be_visible()
    expect(run.page.get_by_text("/v1/next-word").first).to_be_attached()
    # ReDoc's sidebar asks for a logo from its CDN: the page's policy stops it inside the browser
    assert run.blocked == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert run.off_host(server.url) == []
