from rexec.cli.client import main

if __name__ == "__main__":
    main()
