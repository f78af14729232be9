"""placeholder"""
class MultiProcessing: pass
class BackgroundProcess: pass
