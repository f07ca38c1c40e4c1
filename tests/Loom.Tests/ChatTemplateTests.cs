using Loom.Inference.Chat;

namespace Loom.Tests;

/// <summary>
/// Chat templates as models ship them (tokenizer.chat_template), rendered for llama.cpp's test conversation; the
/// expected strings are what the Jinja templates produce (system text merged into the first user message where a
/// template has no system role, as llama.cpp does).
/// </summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] Conversation =
    [
        ChatMessage.System("You are a helpful assistant"),
        ChatMessage.User("Hello"),
        ChatMessage.Assistant("Hi there"),
        ChatMessage.User("Who are you"),
        ChatMessage.Assistant("   I am an assistant   "),
        ChatMessage.User("Another question"),
    ];

    // teknium/OpenHermes-2.5-Mistral-7B
    internal const string ChatMl = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""";

    // HuggingFaceTB/SmolLM2-135M-Instruct
    internal const string SmolLm2 = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""";

    // Qwen/Qwen2.5-0.5B-Instruct (tool-calling branches shortened)
    internal const string Qwen25 = """
        {%- if tools %}
            {{- '<|im_start|>system\n' }}
            {%- if messages[0]['role'] == 'system' %}
                {{- messages[0]['content'] }}
            {%- else %}
                {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
            {%- endif %}
            {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>" }}
            {%- for tool in tools %}
                {{- "\n" }}
                {{- tool | tojson }}
            {%- endfor %}
            {{- "\n</tools><|im_end|>\n" }}
        {%- else %}
            {%- if messages[0]['role'] == 'system' %}
                {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
            {%- else %}
                {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
            {%- endif %}
        {%- endif %}
        {%- for message in messages %}
            {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
                {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
        {%- endif %}
        """;

    // Qwen/Qwen3-0.6B (tool-calling branches shortened)
    internal const string Qwen3 = """
        {%- if messages[0].role == 'system' %}
            {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
        {%- endif %}
        {%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
        {%- for message in messages %}
            {%- if message.content is string %}
                {%- set content = message.content %}
            {%- else %}
                {%- set content = '' %}
            {%- endif %}
            {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
                {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
            {%- elif message.role == "assistant" %}
                {%- set reasoning_content = '' %}
                {%- if '</think>' in content %}
                    {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                    {%- set content = content.split('</think>')[-1].lstrip('\n') %}
                {%- endif %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
                {{- '<|im_end|>\n' }}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
            {%- if enable_thinking is defined and enable_thinking is false %}
                {{- '<think>\n\n</think>\n\n' }}
            {%- endif %}
        {%- endif %}
        """;

    // meta-llama/Llama-2-7b-chat-hf
    internal const string Llama2 = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}""";

    // meta-llama/Meta-Llama-3-8B-Instruct
    internal const string Llama3 = """{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}""";

    // meta-llama/Llama-3.1-8B-Instruct (tool-calling branches shortened)
    internal const string Llama31 = """
        {{- bos_token }}
        {%- if not date_string is defined %}
            {%- set date_string = "26 Jul 2024" %}
        {%- endif %}
        {%- if messages[0]['role'] == 'system' %}
            {%- set system_message = messages[0]['content']|trim %}
            {%- set messages = messages[1:] %}
        {%- else %}
            {%- set system_message = "" %}
        {%- endif %}
        {{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
        {{- "Cutting Knowledge Date: December 2023\n" }}
        {{- "Today Date: " + date_string + "\n\n" }}
        {{- system_message }}
        {{- "<|eot_id|>" }}
        {%- for message in messages %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- endif %}
        """;

    // mistralai/Mistral-7B-Instruct-v0.2 (original template, no system role)
    internal const string MistralOriginal = """{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}""";

    // mistralai "v1" template with a system prompt
    internal const string MistralV1 = """
        {%- if messages[0]['role'] == 'system' %}
            {%- set system_message = messages[0]['content'] %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}

        {{- bos_token }}
        {%- for message in loop_messages %}
            {%- if message['role'] == 'user' %}
                {%- if loop.first and system_message is defined %}
                    {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
                {%- else %}
                    {{- ' [INST] ' + message['content'] + ' [/INST]' }}
                {%- endif %}
            {%- elif message['role'] == 'assistant' %}
                {{- ' ' + message['content'] + eos_token}}
            {%- endif %}
        {%- endfor %}
        """;

    // mistralai/Mistral-7B-Instruct-v0.3, Mistral-Large-2407 ("v3"; tool branches shortened)
    internal const string MistralV3 = """
        {%- if messages[0]["role"] == "system" %}
            {%- set system_message = messages[0]["content"] %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}
        {{- bos_token }}
        {%- for message in loop_messages %}
            {%- if message["role"] == "user" %}
                {%- if loop.last and system_message is defined %}
                    {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
                {%- else %}
                    {{- "[INST] " + message["content"] + "[/INST]" }}
                {%- endif %}
            {%- elif message["role"] == "assistant" %}
                {{- " " + message["content"]|trim + eos_token}}
            {%- endif %}
        {%- endfor %}
        """;

    // mistralai/Mistral-Nemo-Instruct-2407 ("v3-tekken"; tool branches shortened)
    internal const string MistralTekken = """
        {%- if messages[0]["role"] == "system" %}
            {%- set system_message = messages[0]["content"] %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}
        {{- bos_token }}
        {%- for message in loop_messages %}
            {%- if message["role"] == "user" %}
                {%- if loop.last and system_message is defined %}
                    {{- "[INST]" + system_message + "\n\n" + message["content"] + "[/INST]" }}
                {%- else %}
                    {{- "[INST]" + message["content"] + "[/INST]" }}
                {%- endif %}
            {%- elif message["role"] == "assistant" %}
                {{- message["content"] + eos_token}}
            {%- endif %}
        {%- endfor %}
        """;

    // mistralai/Mistral-Large-Instruct-2411 ("v7")
    internal const string MistralV7 = """{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}{% endif %}{% endfor %}""";

    // google/gemma-2-2b-it
    internal const string Gemma2 = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}""";

    // google/gemma-3-1b-it (image content branches shortened)
    internal const string Gemma3 = """
        {{ bos_token }}
        {%- if messages[0]['role'] == 'system' -%}
            {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
            {%- set loop_messages = messages[1:] -%}
        {%- else -%}
            {%- set first_user_prefix = "" -%}
            {%- set loop_messages = messages -%}
        {%- endif -%}
        {%- for message in loop_messages -%}
            {%- if (message['role'] == 'assistant') -%}
                {%- set role = "model" -%}
            {%- else -%}
                {%- set role = message['role'] -%}
            {%- endif -%}
            {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
            {{ message['content'] | trim }}
            {{ '<end_of_turn>\n' }}
        {%- endfor -%}
        {%- if add_generation_prompt -%}
            {{'<start_of_turn>model\n'}}
        {%- endif -%}
        """;

    // microsoft/Phi-3-mini-4k-instruct (first release)
    internal const string Phi3Mini = """{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}""";

    // microsoft/Phi-3.5-mini-instruct
    internal const string Phi35 = """{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}""";

    public static TheoryData<string, string, ChatTemplateFamily, string, string, string> Cases => new()
    {
        { "ChatML", ChatMl, ChatTemplateFamily.ChatMl, "", "",
          "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n" },
        { "Llama 2", Llama2, ChatTemplateFamily.Llama2, "<s>", "</s>",
          "<s>[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there </s><s>[INST] Who are you [/INST] I am an assistant </s><s>[INST] Another question [/INST]" },
        { "Llama 3", Llama3, ChatTemplateFamily.Llama3, "<|begin_of_text|>", "<|end_of_text|>",
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" },
        { "Llama 3.1", Llama31, ChatTemplateFamily.Llama3, "<|begin_of_text|>", "<|eot_id|>",
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" },
        { "Mistral original", MistralOriginal, ChatTemplateFamily.Mistral, "", "</s>",
          "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>[INST] Another question [/INST]" },
        { "Mistral v1", MistralV1, ChatTemplateFamily.Mistral, "", "</s>",
          " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   </s> [INST] Another question [/INST]" },
        { "Mistral v3", MistralV3, ChatTemplateFamily.Mistral, "", "</s>",
          "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>[INST] You are a helpful assistant\n\nAnother question[/INST]" },
        { "Mistral v3-tekken", MistralTekken, ChatTemplateFamily.Mistral, "", "</s>",
          "[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>[INST]You are a helpful assistant\n\nAnother question[/INST]" },
        { "Mistral v7", MistralV7, ChatTemplateFamily.Mistral, "", "</s>",
          "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]" },
        { "Gemma 2", Gemma2, ChatTemplateFamily.Gemma, "<bos>", "<eos>",
          "<bos><start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n" },
        { "Gemma 3", Gemma3, ChatTemplateFamily.Gemma, "<bos>", "<eos>",
          "<bos><start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n" },
        { "Phi-3 mini", Phi3Mini, ChatTemplateFamily.Phi3, "<s>", "<|endoftext|>",
          "<s><|user|>\nYou are a helpful assistant\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n" },
        { "Phi-3.5 mini", Phi35, ChatTemplateFamily.Phi3, "<s>", "<|endoftext|>",
          "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void RendersTheConversationAsTheJinjaTemplateDoes(string name, string source, ChatTemplateFamily family, string bos, string eos, string expected)
    {
        var template = ChatTemplate.Detect(source);
        Assert.NotNull(template);
        Assert.True(family == template.Family, $"{name}: detected {template.Family}");
        Assert.Equal(expected, template.Format(Conversation, addGenerationPrompt: true, bos, eos));
    }

    [Fact]
    public void ChatMlTemplatesWithABuiltInSystemPrompt_UseItWhenTheConversationHasNone()
    {
        var smol = ChatTemplate.Detect(SmolLm2)!;
        Assert.Equal("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            smol.Format([ChatMessage.User("Hi")], true));
        Assert.Equal("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
            smol.Format([ChatMessage.System("Be brief"), ChatMessage.User("Hi")], false));

        var qwen = ChatTemplate.Detect(Qwen25)!;
        Assert.Equal(ChatTemplateFamily.ChatMl, qwen.Family);
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            qwen.Format([ChatMessage.User("Hi")], true));
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", ChatTemplate.Detect(ChatMl)!.Format([ChatMessage.User("Hi")], true));
    }

    [Fact]
    public void Qwen3_KeepsOnlyTheAnswerOfEarlierAssistantTurns()
    {
        var qwen3 = ChatTemplate.Detect(Qwen3)!;
        Assert.Equal(ChatTemplateFamily.ChatMl, qwen3.Family);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
            qwen3.Format([ChatMessage.User("Hi"), ChatMessage.Assistant("<think>\nThe user greets.\n</think>\n\nHello!"), ChatMessage.User("Bye")], true));
        // Other ChatML templates keep assistant text as it is.
        Assert.Contains("<think>x</think>y", ChatTemplate.Detect(ChatMl)!.Format([ChatMessage.Assistant("<think>x</think>y")], false));
    }

    [Fact]
    public void Llama32_WritesTheCurrentDate()
    {
        var template = ChatTemplate.Detect(Llama31.Replace("\"26 Jul 2024\"", "strftime_now(\"%d %b %Y\")"))!;
        Assert.Contains($"Today Date: {DateTime.Now:dd MMM yyyy}\n\n<|eot_id|>", template.Format([ChatMessage.User("Hi")], true));
        var fixedDay = ChatTemplate.Detect(Llama31)!;
        Assert.Contains("Today Date: 26 Jul 2024\n\n<|eot_id|>", fixedDay.Format([ChatMessage.User("Hi")], true));
        // With the ipython role (the full 3.1 template), llama.cpp passes today's date as date_string.
        var withTools = ChatTemplate.Detect(Llama31 + "{%- if message.role == 'tool' %}{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}{%- endif %}")!;
        Assert.Contains($"Today Date: {DateTime.Now:dd MMM yyyy}\n\n", withTools.Format([ChatMessage.User("Hi")], true));
        withTools.Today = new DateTime(2025, 1, 2);
        Assert.Contains("Today Date: 02 Jan 2025\n\n", withTools.Format([ChatMessage.User("Hi")], true));
    }

    [Fact]
    public void SingleUserMessage_WithoutGenerationPrompt()
    {
        Assert.Equal("<start_of_turn>user\nHi<end_of_turn>\n", ChatTemplate.Detect(Gemma2)!.Format([ChatMessage.User(" Hi ")], false));
        Assert.Equal("<|user|>\nHi<|end|>\n<|endoftext|>", ChatTemplate.Detect(Phi35)!.Format([ChatMessage.User("Hi")], false, "<s>", "<|endoftext|>"));
    }

    [Fact]
    public void UnknownOrMissingTemplates_AreNotRecognised()
    {
        Assert.Null(ChatTemplate.Detect(null));
        Assert.Null(ChatTemplate.Detect("  "));
        Assert.Null(ChatTemplate.Detect("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"));
    }

    [Fact]
    public void UnknownRoles_AreRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => ChatTemplate.Detect(ChatMl)!.Format([new ChatMessage("tool", "x")], true));
        Assert.Contains("tool", e.Message);
    }
}
