"""The policy's chat template: Qwen2.5-style ChatML with Hermes tool calls.

The layout matches Qwen2.5's own template, so that a real Qwen checkpoint and the
tiny policy see prompts of the same shape:

- ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn;
- with ``tools=`` (OpenAI function-calling JSON, as ``ListTools`` publishes it), the
  system turn lists one schema per line inside ``<tools></tools>`` and says how to call;
- an assistant's ``tool_calls`` become ``<tool_call>\\n{"name": .., "arguments": {..}}\\n</tool_call>``
  blocks (``arguments`` may be a dict or an already-encoded JSON string, as in OpenAI messages);
- consecutive ``tool`` messages share one ``user`` turn, each wrapped in
  ``<tool_response>\\n..\\n</tool_response>``;
- ``add_generation_prompt`` opens an assistant turn.

Content may be a string or a list of OpenAI-style parts; text parts are concatenated. Image parts
(``{"type": "image", ...}``) render as nothing, or as the vision policy's placeholder
(``chat_template(image_placeholder)``, as Qwen2-VL renders them).
"""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

def chat_template(image_placeholder: str = "") -> str:
    """The template; with ``image_placeholder`` each ``{"type": "image"}`` content part renders as it
    (the vision policy's ``<|vision_start|><|image_pad|><|vision_end|>``), without one as nothing."""
    image_branch = ("""
            {%- elif part.type == 'image' -%}
                {{- '""" + image_placeholder + """' -}}""") if image_placeholder else ""
    return (
    """{%- macro render_content(content) -%}
    {%- if content is none -%}
    {%- elif content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if part is string -%}
                {{- part -}}
            {%- elif part.type == 'text' -%}
                {{- part.text -}}"""
    + image_branch
    + """
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- render_content(messages[0].content) }}
    {%- else %}
        {{- '"""
    + DEFAULT_SYSTEM_PROMPT
    + """' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
        "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
        "{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + render_content(messages[0].content) + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\n"""
    + DEFAULT_SYSTEM_PROMPT
    + """<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\\n' + render_content(message.content) + '<|im_end|>\\n' }}
        {%- endif %}
    {%- elif message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + render_content(message.content) + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- set text = render_content(message.content) %}
        {%- if text %}
            {{- '\\n' + text }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + render_content(message.content) + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
)


CHAT_TEMPLATE = chat_template()
