# Windows counterpart of install/setup.sh for the backend environment: a virtual environment
# with torch and the scenewright package. Idempotent. Usage (PowerShell):
#   powershell -ExecutionPolicy Bypass -File install\setup.ps1
# Environment variables as in setup.sh: SCENEWRIGHT_VENV, SCENEWRIGHT_TORCH (cpu|cuda|skip),
# SCENEWRIGHT_TORCH_INDEX, SCENEWRIGHT_EXTRAS.
$ErrorActionPreference = "Stop"

function Say($message) { Write-Host "[scenewright setup] $message" }

$repo = Split-Path -Parent $PSScriptRoot
$venv = if ($env:SCENEWRIGHT_VENV) { $env:SCENEWRIGHT_VENV } else { Join-Path $repo ".venv" }
$torchVersion = "2.13.0"

$python = Join-Path $venv "Scripts\python.exe"
if (-not (Test-Path $python)) {
    $launcher = Get-Command py -ErrorAction SilentlyContinue
    if ($launcher) { & py -3.11 -m venv $venv } else { & python -m venv $venv }
    if ($LASTEXITCODE -ne 0) { Say "could not create $venv: install Python 3.11 from python.org"; exit 1 }
    Say "created the environment in $venv"
}

$flavour = $env:SCENEWRIGHT_TORCH
if (-not $flavour) {
    $flavour = if (Get-Command nvidia-smi -ErrorAction SilentlyContinue) { "cuda" } else { "cpu" }
}
& $python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$torchVersion') else 1)" 2>$null
if ($LASTEXITCODE -eq 0) {
    Say "torch already installed"
} elseif ($flavour -ne "skip") {
    Say "installing torch $torchVersion ($flavour; set SCENEWRIGHT_TORCH to override)"
    $index = @()
    if ($env:SCENEWRIGHT_TORCH_INDEX) { $index = @("--index-url", $env:SCENEWRIGHT_TORCH_INDEX) }
    & $python -m pip install --disable-pip-version-check -q "torch==$torchVersion" @index
    if ($LASTEXITCODE -ne 0) { Say "installing torch failed"; exit 1 }
}

$target = if ($env:SCENEWRIGHT_EXTRAS) { "$repo[$($env:SCENEWRIGHT_EXTRAS)]" } else { $repo }
Say "installing the scenewright package"
& $python -m pip install --disable-pip-version-check -q -e $target
if ($LASTEXITCODE -ne 0) { Say "installing the package failed"; exit 1 }
Say "environment ready: $venv (python: $python). In Blender, set the add-on's Environment to this folder."
