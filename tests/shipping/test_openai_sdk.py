"""The OpenAI Python SDK pointed at the proxy, exactly as the README's recipe says.

Usage: python3 tests/sdk/test_openai_sdk.py <proxy base url> <proxy key>
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import sys
import traceback

from openai import OpenAI

BASE_URL, PROXY_KEY = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=BASE_URL, api_key=PROXY_KEY)


def test_non_streaming_completion():
    reply = client.chat.completions.create(
        model="qwen/qwen3-coder:free", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the mock.", reply


def test_streaming_completion_arrives_in_chunks():
    stream = client.chat.completions.create(
        model="qwen/qwen3-coder:free", messages=[{"role": "user", "content": "hi"}], stream=True)
    # The last chunk carries finish_reason and usage with an empty delta, as OpenRouter's does.
    pieces = [chunk.choices[0].delta.content for chunk in stream
              if chunk.choices and chunk.choices[0].delta.content is not None]
    assert pieces == ["Hello", " from", " the", " mock."], pieces


def test_wrong_proxy_key_is_an_authentication_error():
    bad = OpenAI(base_url=BASE_URL, api_key="not-the-proxy-key", max_retries=0)
    try:
        bad.models.list()
    except Exception as err:  # the SDK raises AuthenticationError for 401
        assert type(err).__name__ == "AuthenticationError", repr(err)
        return
    raise AssertionError("a wrong key was accepted")


def test_models_list_passes_through():
    assert [m.id for m in client.models.list()] == ["qwen/qwen3-coder:free"]


if __name__ == "__main__":
    tests = [f for name, f in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for test in tests:
        try:
            test()
            print(f"ok   {test.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {test.__name__}")
            traceback.print_exc()
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
