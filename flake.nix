{
  description = "artiq-journal: crash-safe journaling, recovery and resume for ARTIQ experiments";

  # Built against ARTIQ's own nixpkgs, so the package lands in the same
  # Python (same h5py, numpy) as ARTIQ's worker.
  inputs.artiq.url = "git+https://github.com/m-labs/artiq.git?ref=release-8";
  inputs.nixpkgs.follows = "artiq/nixpkgs";

  outputs = { self, artiq, nixpkgs }:
    let
      system = "x86_64-linux";   # the system ARTIQ's flake builds for
      pkgs = nixpkgs.legacyPackages.${system};
      python = pkgs.python3;
      pyproject = builtins.fromTOML (builtins.readFile ./pyproject.toml);

      artiq-journal = python.pkgs.buildPythonPackage {
        pname = "artiq-journal";
        version = pyproject.project.version;
        src = self;
        # "pyproject" rather than `pyproject = true`: understood by every
        # nixpkgs an ARTIQ release has pinned (22.05 .. 24.x).
        format = "pyproject";

        # Older nixpkgs ship an older hatchling; what we use of it
        # (packages + force-include) is much older than the pin.
        postPatch = ''
          substituteInPlace pyproject.toml --replace '"hatchling>=1.21"' '"hatchling"'
        '';

        nativeBuildInputs = [ python.pkgs.hatchling ];
        propagatedBuildInputs = with python.pkgs; [ h5py numpy msgpack filelock tqdm ];

        # The wheel carries artiq_journal_autoload.pth at its root
        # (pyproject.toml, force-include), so the install puts it in
        # $out/lib/pythonX.Y/site-packages.  A Python env built with
        # python3.withPackages links it into the env's site-packages, which
        # nixpkgs' sitecustomize processes with site.addsitedir: the .pth
        # runs in every interpreter of the env, ARTIQ's worker included.
        # No sitecustomize.py is shipped (it would shadow nixpkgs' own).
        # (`if`, not `! test`: set -e ignores a negated command.)
        postInstall = ''
          test -f "$out/${python.sitePackages}/artiq_journal_autoload.pth"
          if [ -e "$out/${python.sitePackages}/sitecustomize.py" ]; then
            echo "artiq-journal must not ship a sitecustomize.py" >&2
            exit 1
          fi
        '';

        pythonImportsCheck = [ "artiq_journal" "artiq_journal.cli.main" ];
        # The test suite needs the vendored ARTIQ sources and real
        # subprocesses; run it with `nix develop` + pytest instead.
        doCheck = false;
      };

      # The same env an ARTIQ user builds, minus ARTIQ itself (cheap).
      journalEnv = python.withPackages (ps: [ artiq-journal ]);
    in {
      packages.${system} = {
        inherit artiq-journal;
        default = artiq-journal;
      };

      # `nix flake check`: the hook really loads in a withPackages env when
      # ARTIQ_JOURNAL=1, and not otherwise.
      checks.${system}.hook-loads = pkgs.runCommand "artiq-journal-hook-loads" { } ''
        ARTIQ_JOURNAL=1 ${journalEnv}/bin/python -c \
          "import sys; assert 'artiq_journal.worker_hooks.autoload' in sys.modules"
        ARTIQ_JOURNAL=0 ${journalEnv}/bin/python -c \
          "import sys; assert 'artiq_journal.worker_hooks.autoload' not in sys.modules"
        touch $out
      '';

      devShells.${system}.default = pkgs.mkShell {
        packages = [
          (python.withPackages (ps: [
            artiq.packages.${system}.artiq
            artiq-journal
            ps.pytest
            ps.hypothesis
          ]))
        ];
      };
    };
}
