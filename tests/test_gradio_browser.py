"""The Gradio app in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).

The app runs as a user starts it with no arguments (the tiny random checkpoint and its notice). The test uploads an
image and a speech file, asks, saves the README's screenshot (assets/gradio_demo.png), asks a follow-up and watches
its reply stream in, regenerates, sends an unsupported file, clears, asks again, and asks with speech recorded from
Chromium's fake microphone. Reply texts are checked against `model.chat` by
the API tests; here the page itself is under test.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from gradio_app_process import REPO, first_answered, running_app, user_message, write_image, write_speech

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install chromium; see scripts/setup.sh)"
)
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # A fake microphone (Chromium's test tone), allowed without a prompt, for the recording step.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]
SCREENSHOT = REPO / "assets" / "gradio_demo.png"
MAX_NEW_TOKENS = "64"

BOT = "#chatbot [data-testid='bot']"
USER = "#chatbot [data-testid='user']"
# Every text the last reply bubble shows, recorded in the page on each DOM change, so no update is missed.
RECORD_REPLIES = """(selector) => {
    window.replyTexts = [];
    new MutationObserver(() => {
        const bubbles = document.querySelectorAll(selector);
        const text = bubbles.length ? bubbles[bubbles.length - 1].innerText : null;
        if (text !== window.replyTexts[window.replyTexts.length - 1]) window.replyTexts.push(text);
    }).observe(document.querySelector("#chatbot"), {childList: true, subtree: true, characterData: true});
}"""
TRACKER = "#chatbot [data-testid='status-tracker']"
AUDIO_UPLOADED = "#audio-input [data-testid='download-link']"
"""The audio box links its file once the server has it (its player is there before, while recording too)."""


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint, tmp_path_factory):
    """Started without --model_path: the default is the same tiny checkpoint (made by the fixture first)."""
    with running_app(tmp_path_factory.mktemp("gradio_browser")) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, permissions=["microphone"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(app_url)
            page.wait_for_selector("#message textarea")
            yield page
        finally:
            browser.close()


def wait_for_reply(page) -> None:
    """The chat's status tracker shows while an event runs and hides when it ends."""
    page.wait_for_function(f"!document.querySelector(\"{TRACKER}\").classList.contains('hide')", polling=10)
    page.wait_for_function(f"document.querySelector(\"{TRACKER}\").classList.contains('hide')")


def send(page, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#message textarea").press("Enter")


def test_chat_in_the_browser(page, tiny_model, tmp_path):
    image = write_image(tmp_path / "shapes.png", seed=3)
    speech = write_speech(tmp_path / "question.wav")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    budget = int(MAX_NEW_TOKENS)
    # Questions the random model answers (the second at some length, to watch it grow), picked by model.chat.
    first, first_reply = first_answered(tiny_model, [
        [user_message(q, (image,), (speech,))] for q in ("What is in this picture, and what do you hear?", "Describe both.", "Why?")
    ], budget, min_chars=3)
    context = first + [{"role": "assistant", "content": first_reply}]
    second, _ = first_answered(tiny_model, [
        context + [user_message(q)] for q in ("Tell me more.", "What colours are the shapes?", "Go on.", "And then?")
    ], budget, min_chars=12)
    fresh, _ = first_answered(tiny_model, [[user_message(q)] for q in ("Hello", "Hi there", "Good morning")], budget, 3)
    question, follow_up, greeting = first[0]["content"]["text"], second[-1]["content"], fresh[0]["content"]

    assert "Random weights" in page.locator("#random-weights-notice").inner_text()
    max_tokens = page.get_by_label("number input for Max new tokens")
    max_tokens.fill(MAX_NEW_TOKENS)
    max_tokens.press("Tab")

    # A turn with speech (in the audio box) and an image (in the message), then the question.
    page.locator("#audio-input button[aria-label='Upload file']").click()
    page.locator("#audio-input input[type=file]").set_input_files(speech)
    page.wait_for_selector(AUDIO_UPLOADED)
    page.locator("#message input[type=file]").set_input_files(image)
    page.wait_for_selector("#message img")
    send(page, question)
    wait_for_reply(page)
    assert page.locator(BOT).count() == 1 and page.locator(BOT).last.inner_text()
    assert page.locator(f"{USER} img").count() == 1 and page.locator(f"{USER} audio").count() == 1
    assert page.locator(USER).last.inner_text() == question
    assert page.locator("#message textarea").input_value() == ""  # the box is ready for the next question
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)

    # A follow-up in the same conversation; its reply streams in: the page shows it growing.
    page.evaluate(RECORD_REPLIES, BOT)
    send(page, follow_up)
    wait_for_reply(page)
    final = page.locator(BOT).last.inner_text()
    seen = [text for text in page.evaluate("window.replyTexts") if text]
    assert page.locator(BOT).count() == 2 and final and seen[-1] == final
    assert len(seen) >= 3, f"the reply should arrive in pieces, the page showed {seen}"

    # Regenerate replaces the last reply (greedy: with the same text), it does not add one.
    page.locator("#regenerate").click()
    wait_for_reply(page)
    assert page.locator(BOT).count() == 2
    assert page.locator(BOT).last.inner_text() == final

    # A file the model cannot take: an error in the page, and the conversation is as it was.
    page.locator("#message input[type=file]").set_input_files(notes)
    send(page, "And this?")
    error = page.locator(".toast-body.error").first
    error.wait_for()
    assert "Unsupported file type '.txt' (notes.txt)" in error.inner_text()
    assert page.locator(BOT).count() == 2
    page.locator("[data-testid='toast-close']").first.click()
    page.wait_for_selector(".toast-body.error", state="detached")

    page.locator("#clear").click()
    page.wait_for_function(f"document.querySelectorAll(\"{BOT}\").length === 0")
    assert page.locator(USER).count() == 0
    assert page.locator("#message textarea").input_value() == ""

    # Still working after all that: a new conversation gets a reply.
    send(page, greeting)
    wait_for_reply(page)
    assert page.locator(USER).count() == 1 and page.locator(BOT).count() == 1

    # Speech from the microphone: the browser records WAV, the app takes it (no error) and shows it in the turn.
    page.locator("#audio-input button[aria-label='Record audio']").click()
    page.locator("#audio-input button:has-text('Record')").first.click()
    page.wait_for_timeout(1500)
    page.locator("#audio-input button:has-text('Stop')").first.click()
    page.wait_for_selector(AUDIO_UPLOADED)
    send(page, "What did I say?")
    wait_for_reply(page)
    assert page.locator(".toast-body.error").count() == 0
    assert page.locator(f"{USER} audio").count() == 1 and page.locator(USER).last.inner_text() == "What did I say?"
