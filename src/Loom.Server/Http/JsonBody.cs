using System.Text.Json;

namespace Loom.Server.Http;

/// <summary>Typed, validated access to a JSON request object; every mistake becomes a 400 naming the field.</summary>
public sealed class JsonBody
{
    private readonly JsonElement _root;

    private JsonBody(JsonElement root) => _root = root;

    public static async Task<(JsonBody Body, JsonDocument Document)> ReadAsync(Stream body, CancellationToken cancellation)
    {
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(body, new JsonDocumentOptions { MaxDepth = 64 }, cancellation);
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
        if (document.RootElement.ValueKind != JsonValueKind.Object)
        {
            document.Dispose();
            throw ApiException.BadRequest("the request body must be a JSON object");
        }
        return (new JsonBody(document.RootElement), document);
    }

    public JsonElement Root => _root;

    public JsonElement? Get(string name) =>
        _root.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

    public string? String(string name)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.String) throw WrongType(name, "a string", v);
        return Text(v, name);
    }

    /// <summary>A JSON string's value; a lone surrogate escape (which no UTF-16 string can hold validly) is a 400.</summary>
    public static string Text(JsonElement value, string name)
    {
        try
        {
            return value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw ApiException.BadRequest($"'{name}' is not valid Unicode text", name, "invalid_value");
        }
    }

    public bool? Bool(string name)
    {
        if (Get(name) is not { } v) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw WrongType(name, "a boolean", v),
        };
    }

    public long? Integer(string name, long min, long max)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long n))
        {
            // 5.0 is an integer to JSON clients that only have doubles.
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < 1e15) n = (long)d;
            else throw WrongType(name, "an integer", v);
        }
        if (n < min || n > max) throw ApiException.BadRequest($"'{name}' must be between {min} and {max} (got {n})", name, "invalid_value");
        return n;
    }

    public float? Number(string name, double min, double max)
    {
        if (Get(name) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d)) throw WrongType(name, "a finite number", v);
        if (!(d >= min && d <= max)) throw ApiException.BadRequest($"'{name}' must be between {min} and {max} (got {d})", name, "invalid_value");
        return (float)d;
    }

    /// <summary>"stop": a string or an array of strings.</summary>
    public IReadOnlyList<string> StopStrings(string name, int maxCount)
    {
        if (Get(name) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.String) return [Text(v, name)];
        if (v.ValueKind != JsonValueKind.Array) throw WrongType(name, "a string or an array of strings", v);
        if (v.GetArrayLength() > maxCount) throw ApiException.BadRequest($"'{name}' may hold at most {maxCount} strings", name, "invalid_value");
        var stops = new List<string>();
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String) throw WrongType(name, "a string or an array of strings", item);
            stops.Add(Text(item, name));
        }
        return stops;
    }

    public static ApiException WrongType(string name, string expected, JsonElement got) =>
        ApiException.BadRequest($"'{name}' must be {expected}, not {Describe(got.ValueKind)}", name, "invalid_type");

    private static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
