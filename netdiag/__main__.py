import sys

try:
    from netdiag.cli import main
except KeyboardInterrupt:          # Ctrl-C while Python loads netdiag: nothing was made yet
    sys.exit(130)

main()
