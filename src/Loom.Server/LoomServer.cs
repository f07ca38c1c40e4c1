using System.Net;
using System.Security.Cryptography;
using System.Text;
using Loom.Server.Engine;
using Loom.Server.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Loom.Server;

public sealed record ServerOptions
{
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (see <see cref="LoomServer.Addresses"/>).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>When set, /v1 requests must send "Authorization: Bearer KEY".</summary>
    public string? ApiKey { get; init; }
    public LogLevel LogLevel { get; init; } = LogLevel.Warning;
}

/// <summary>The OpenAI-compatible HTTP server (Kestrel) over a <see cref="LoomEngine"/>.</summary>
public static class LoomServer
{
    public const long MaxRequestBodyBytes = 16 << 20;

    public static WebApplication Build(LoomEngine engine, ServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Port is < 0 or > 65535) throw new ArgumentException($"the port must be between 0 and 65535 (got {options.Port})");
        if (options.ApiKey is { Length: 0 }) throw new ArgumentException("the API key must not be empty");

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.SetMinimumLevel(options.LogLevel);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Limits.MaxRequestBodySize = MaxRequestBodyBytes;
            kestrel.AddServerHeader = false;
            if (options.Host == "localhost") kestrel.ListenLocalhost(options.Port);
            else if (IPAddress.TryParse(options.Host, out var address)) kestrel.Listen(address, options.Port);
            else throw new ArgumentException($"--host must be an IP address or 'localhost' (got '{options.Host}')");
        });

        var app = builder.Build();
        var endpoints = new OpenAiEndpoints(engine);
        byte[]? key = options.ApiKey is null ? null : Encoding.UTF8.GetBytes(options.ApiKey);

        app.Use(async (context, next) =>
        {
            try
            {
                if (key is not null && context.Request.Path.StartsWithSegments("/v1") && !Authorized(context.Request, key))
                    throw new ApiException(401, "Invalid or missing API key: send 'Authorization: Bearer KEY'", null, "invalid_api_key");
                await next(context);
            }
            catch (ApiException e)
            {
                await WriteError(context, e);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // The client went away; its sequences were cancelled with the request.
            }
            catch (BadHttpRequestException e)
            {
                await WriteError(context, new ApiException(e.StatusCode, e.Message));
            }
            catch (Exception e)
            {
                app.Logger.LogError(e, "request failed");
                await WriteError(context, new ApiException(500, $"internal error: {e.Message}", null, "internal_error", "server_error"));
            }
            finally
            {
                engine.Metrics.CountRequest(EndpointLabel(context), context.Response.StatusCode);
            }
        });

        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/metrics", () => Results.Text(engine.Metrics.Render(), "text/plain; version=0.0.4; charset=utf-8"));
        app.MapGet("/v1/models", endpoints.Models);
        app.MapPost("/v1/completions", endpoints.Completions);
        app.MapPost("/v1/chat/completions", endpoints.ChatCompletions);
        app.MapFallback(context =>
            throw new ApiException(404, $"Unknown endpoint: {context.Request.Method} {context.Request.Path}", null, "unknown_url"));
        return app;
    }

    /// <summary>The addresses a started server listens on (with the real port when 0 was asked for).</summary>
    public static IReadOnlyList<Uri> Addresses(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToArray();

    private static bool Authorized(HttpRequest request, byte[] key)
    {
        string header = request.Headers.Authorization.ToString();
        const string prefix = "Bearer ";
        if (!header.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)) return false;
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[prefix.Length..].Trim()), key);
    }

    private static async Task WriteError(HttpContext context, ApiException e)
    {
        if (context.Response.HasStarted) return;
        context.Response.StatusCode = e.Status;
        context.Response.ContentType = "application/json; charset=utf-8";
        if (e.Status == 401) context.Response.Headers.WWWAuthenticate = "Bearer";
        try
        {
            await context.Response.Body.WriteAsync(e.ToJson(), context.RequestAborted);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static string EndpointLabel(HttpContext context) => context.Request.Path.Value switch
    {
        "/health" or "/metrics" or "/v1/models" or "/v1/completions" or "/v1/chat/completions" => context.Request.Path.Value,
        _ => "other",
    };
}
