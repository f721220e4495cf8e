"""The `openai` Python package against `sepchat serve --api`, as a user's script would use it.

Run by the Rust test `the_openai_python_package_works_against_the_server` (tests/openai.rs), which starts the
server and passes SEPCHAT_API_BASE (e.g. http://127.0.0.1:1234/v1), SEPCHAT_API_TOKEN and SEPCHAT_MODEL_ID.
Any failed check raises, so the interpreter exits non-zero and the Rust test prints what went wrong.
"""

import os

import openai

BASE_URL = os.environ["SEPCHAT_API_BASE"]
TOKEN = os.environ["SEPCHAT_API_TOKEN"]
MODEL_ID = os.environ["SEPCHAT_MODEL_ID"]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "What is the capital of France?"},
]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    # No retries: a refusal must show up as what it is, not as a slow success.
    client = openai.OpenAI(base_url=BASE_URL, api_key=TOKEN, max_retries=0, timeout=300)

    models = client.models.list()
    ids = [model.id for model in models.data]
    check(ids == [MODEL_ID], f"models.list: {ids}")

    completion = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, temperature=0, max_tokens=48)
    choice = completion.choices[0]
    answer = choice.message.content
    check(choice.message.role == "assistant", f"role: {choice.message.role}")
    check("Paris" in answer, f"non-streamed answer: {answer!r}")
    check(choice.finish_reason == "stop", f"finish_reason: {choice.finish_reason}")
    check(completion.usage.completion_tokens > 0, f"usage: {completion.usage}")
    print("non-streamed:", repr(answer))

    stream = client.chat.completions.create(
        model="any-name-works", messages=MESSAGES, temperature=0, max_tokens=48, stream=True
    )
    pieces = []
    finish_reasons = []
    for chunk in stream:
        for streamed_choice in chunk.choices:
            if streamed_choice.delta.content:
                pieces.append(streamed_choice.delta.content)
            if streamed_choice.finish_reason:
                finish_reasons.append(streamed_choice.finish_reason)
    streamed = "".join(pieces)
    check(len(pieces) > 1, f"the streamed answer came in one piece: {pieces}")
    check(streamed == answer, f"streamed {streamed!r} != non-streamed {answer!r}")
    check(finish_reasons == ["stop"], f"finish reasons: {finish_reasons}")
    print("streamed:", repr(streamed))

    wrong = openai.OpenAI(base_url=BASE_URL, api_key=TOKEN + "-wrong", max_retries=0)
    try:
        wrong.models.list()
    except openai.AuthenticationError as error:
        check(error.status_code == 401, f"status: {error.status_code}")
        print("wrong key refused:", error.message)
    else:
        raise AssertionError("a wrong API key was accepted")

    print("all checks passed")


if __name__ == "__main__":
    main()
